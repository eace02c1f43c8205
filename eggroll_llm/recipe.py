"""A recipe (a config.Recipe, from YAML and overrides) resolved into the objects the trainers take, then run.

The CLI is a thin layer over the Python API: `eggroll-llm train RECIPE.yaml` does exactly what

    trainer = EggrollTrainer(model=config.model.name, reward_funcs=config.rewards,
                             train_dataset=..., eval_dataset=..., args=config.trainer_config(),
                             processing_class=tokenizer)
    trainer.train(resume_from_checkpoint=resume)

does, with the datasets built from `data:` (data.task_dataset) and `GRPOBaselineTrainer` for `method: grpo`. The
reward functions are resolved first and the data is loaded next, so a bad import path, a missing prompt column or a
bad file fails in seconds, before a model is loaded or anything is written.
"""

from __future__ import annotations

import warnings
from pathlib import Path

from .config import DryRun, Recipe
from .data import task_dataset
from .inputs import RewardSet, hide_progress_bars
from .models import base_tokenizer
from .rundir import check_recipe_can_resume, check_resumable, check_writable, refuse_if_busy
from .runlog import TrainOutput


def recipe_datasets(config: Recipe, tokenizer):
    """(train_dataset, eval_dataset) of a recipe's `data:` section, with a `prompt` column each.

    Generated tasks draw the training rows with the run's seed and the held-out rows with seed 0, so every seed of a
    recipe is evaluated on the same problems.
    """
    data = config.data
    if data.data_path is not None and Path(data.data_path).expanduser().is_file():
        warnings.warn(f"data.data_path {data.data_path} is a single file, so it is both the training set and the "
                      "held-out set: eval_* metrics measure training data; for held-out figures pass a folder holding "
                      f"{data.train_split}.jsonl and {data.eval_split}.jsonl", stacklevel=2)
    shared = dict(data_path=data.data_path, prompt_column=data.prompt_column, few_shot=data.few_shot, seed=config.seed)
    train = task_dataset(data.task, data.train_split, tokenizer, rows_seed=config.seed, **shared)
    held_out = task_dataset(data.task, data.eval_split, tokenizer, limit=data.eval_limit, rows_seed=0, **shared)
    return train, held_out


def run_recipe(config: Recipe, resume: bool = False, dry_run: DryRun | None = None) -> TrainOutput:
    """Train `config` (method eggroll or grpo) with the trainers' Python API; returns the trainer's TrainOutput
    (`.run_dir` is the run directory). `dry_run` (train --dry_run) starts from a random-init model."""
    if config.method == "grpo":
        from .grpo import GRPOBaselineTrainer as Trainer
        from .grpo import check_grpo

        check_grpo(config)
    else:
        from .trainer import EggrollTrainer as Trainer
    if dry_run is not None:
        dry_run.check(config)
    if config.disable_tqdm:
        hide_progress_bars()
    check_resumable(Path(config.output_dir), resume)  # a mistyped --resume path: refuse before loading anything
    if resume:
        check_recipe_can_resume(Path(config.output_dir))  # a run of Python objects resumes from Python only
    check_writable(Path(config.output_dir))  # a read-only or foreign folder: likewise
    refuse_if_busy(Path(config.output_dir))  # another run on this directory: likewise
    RewardSet(config.rewards, config.reward_weights)  # fails fast on a bad name or import path
    tokenizer = base_tokenizer(config.model, dry_run)
    train, held_out = recipe_datasets(config, tokenizer)
    trainer = Trainer(model=config.model.name, reward_funcs=config.rewards, train_dataset=train,
                      eval_dataset=held_out, args=config.trainer_config(), processing_class=tokenizer,
                      data_source=config.data, dry_run=dry_run)
    return trainer.train(resume_from_checkpoint=resume)
