"""What both trainers take, resolved and checked: the reward functions and the datasets' prompts.

EggrollTrainer and the GRPO baseline accept the objects TRL's GRPOTrainer does: reward functions as callables
`fn(prompts, completions, **columns) -> list[float | None]`, built-in names or `package.module:function` paths;
datasets with a `prompt` column, plain text or chat messages. `RewardSet` scores completions with every other
dataset column as a keyword list (TRL's convention: `answer` is one column among others), weighted by
`reward_weights`; `PromptSet` holds a dataset's prompts as the rewards see them (as given) and as the engine sees
them (rendered through the chat template and tokenised, checked against the model's context).
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable, Sequence

import datasets
import torch

from .config import ConfigError, DataConfig, RunArgs, validate
from .data import QA_TASKS, DataError, check_prompts, render_prompt
from .fitness import check_scores
from .models import load_base, load_tokenizer
from .rewards import ACCURACY_REWARDS, RewardError, resolve_reward, reward_name

# the settings a long-prompt message names: a recipe's keys (eggroll-llm eval passes its own options)
RECIPE_SETTINGS = ("generation.max_new_tokens", "data.long_prompts: truncate")


class RewardSet:
    """The run's reward functions and their weights; calling it scores completions → (weighted sum, per function)."""

    def __init__(self, reward_funcs: Callable | str | Sequence[Callable | str], weights: Sequence[float] | None = None):
        entries = list(reward_funcs) if isinstance(reward_funcs, (list, tuple)) else [reward_funcs]
        if not entries:
            raise RewardError("reward_funcs is empty; give at least one reward function")
        self.funcs = [resolve_reward(entry) for entry in entries]
        self.names = [reward_name(entry) for entry in entries]  # what config.yaml records
        self.wants_accuracy = any(fn in ACCURACY_REWARDS for fn in self.funcs)  # eval_accuracy beside eval_reward
        self.labels = _unique([getattr(fn, "__name__", None) or type(fn).__name__ for fn in self.funcs])  # log keys
        if weights is not None and len(weights) != len(entries):
            raise RewardError(f"reward_weights has {len(weights)} entries for {len(entries)} reward functions; give "
                              "one weight per reward function")
        self.weights = [1.0] * len(entries) if weights is None else [float(w) for w in weights]

    def __call__(self, prompts: list, completions: list, completion_ids: list[list[int]],
                 columns: dict[str, list]) -> tuple[torch.Tensor, dict]:
        """(weighted total [rows], {label: scores [rows]}); a function's None scores count as 0 (check_scores).

        Each function gets what TRL's GRPOTrainer hands it: prompts, completions, completion_ids and the columns."""
        total = torch.zeros(len(completions))
        parts = {}
        for label, fn, weight in zip(self.labels, self.funcs, self.weights):
            scores = fn(prompts, completions, completion_ids=completion_ids, **columns)
            if not isinstance(scores, (list, tuple, torch.Tensor)):
                raise RewardError(f"reward {label!r} returned {type(scores).__name__} {scores!r:.80}, not a list; "
                                  f"return one score (or None) per completion: a list of {len(completions)}")
            if all(score is None for score in scores):
                warnings.warn(f"reward {label!r} returned None for every completion (None counts as 0, so it gives "
                              "no signal: a step of only such scores makes no update); check that it applies to "
                              "this dataset", stacklevel=2)
            parts[label] = check_scores(scores, len(completions), label)
            total += weight * parts[label]
        return total, parts


class PromptSet:
    """A dataset's prompts and columns: `prompts` as given (for the rewards), `ids` tokenised (for the engine).

    Prompts are rendered (chat messages through the chat template) and tokenised once, the way the engines would
    (no special tokens added: a chat template holds those it needs). With `max_prompt_tokens` (the model's context
    minus the completion budget) a longer prompt is an error naming its row, or with `long_prompts="truncate"` keeps
    its last `max_prompt_tokens` tokens, with a warning.
    """

    def __init__(self, dataset: datasets.Dataset, tokenizer, source: str, max_prompt_tokens: int | None = None,
                 long_prompts: str = "error", settings: tuple[str, str] = RECIPE_SETTINGS):
        check_prompts(dataset, source)
        self.prompts = dataset["prompt"]
        texts = [render_prompt(tokenizer, p) for p in self.prompts]
        # verbose=False: the tokenizer's own over-length notice; fit_prompts below says what happens instead
        self.ids = tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
        if max_prompt_tokens is not None:
            self.ids = fit_prompts(self.ids, max_prompt_tokens, long_prompts, source, settings)
        self.conversational = not isinstance(self.prompts[0], str)
        self.columns = {name: dataset[name] for name in dataset.column_names if name != "prompt"}

    def __len__(self) -> int:
        return len(self.prompts)

    def select(self, indices: Sequence[int]) -> tuple[list, list[list[int]], dict[str, list]]:
        """(prompts, token ids, columns) of the rows at `indices`, in that order (repeats allowed)."""
        return ([self.prompts[i] for i in indices], [self.ids[i] for i in indices],
                {name: [values[i] for i in indices] for name, values in self.columns.items()})

    def completions(self, texts: list[str]) -> list:
        """Completions as TRL hands them to rewards: text, or [{"role": "assistant", "content": text}] for chats."""
        return [[{"role": "assistant", "content": t}] for t in texts] if self.conversational else list(texts)


LONG_PROMPTS = ("error", "truncate")


def context_limit(model) -> int | None:
    """The positions the model can attend over (max_position_embeddings or n_positions), None where unknown."""
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)


def prompt_budget(model, max_new_tokens: int) -> int | None:
    """Prompt tokens that fit beside a `max_new_tokens` completion in the model's context (None: no known limit)."""
    limit = context_limit(model)
    if limit is None:
        return None
    if limit <= max_new_tokens:
        raise ConfigError(f"generation.max_new_tokens {max_new_tokens} leaves no room for a prompt in the model's "
                          f"context of {limit} positions; lower max_new_tokens")
    return limit - max_new_tokens


def fit_prompts(ids: list[list[int]], budget: int, policy: str, source: str,
                settings: tuple[str, str] = RECIPE_SETTINGS) -> list[list[int]]:
    """`ids` checked against `budget` tokens: an error naming the first long row, or left-truncated with a warning.

    `settings` names the completion budget and the truncation setting in the messages (the recipe keys by default,
    `eggroll-llm eval` passes its options)."""
    budget_setting, truncate_setting = settings
    long = [row for row, prompt in enumerate(ids) if len(prompt) > budget]
    if not long:
        return ids
    first = long[0]
    if policy != "truncate":
        raise DataError(f"{source}, row {first + 1}: the prompt has {len(ids[first]):,} tokens, over the {budget:,} "
                        f"that fit beside the completion budget in the model's context ({len(long)} such rows); "
                        f"shorten the prompts, lower {budget_setting}, or set {truncate_setting} "
                        "(keeps each prompt's last tokens)")
    warnings.warn(f"{source}: {len(long)} prompts are longer than the {budget:,} tokens that fit beside the "
                  f"completion budget (the first: row {first + 1}, {len(ids[first]):,} tokens); keeping their last "
                  f"{budget:,} tokens ({truncate_setting})", stacklevel=2)
    return [prompt[-budget:] if len(prompt) > budget else prompt for prompt in ids]


# data.* keys that say how a recipe builds its datasets; with datasets given as objects they would build nothing
RECIPE_DATA_KEYS = ("task", "data_path", "prompt_column", "train_split", "eval_split", "eval_limit", "few_shot")


def describe_dataset(dataset: datasets.Dataset | None) -> dict | None:
    """What config.yaml records of a dataset given as an object: its fingerprint (datasets' own content hash), its
    number of rows and its columns."""
    if dataset is None:
        return None
    return {"fingerprint": dataset._fingerprint, "num_rows": len(dataset), "columns": list(dataset.column_names)}


def run_config(args: RunArgs, model, rewards: RewardSet, train_dataset, eval_dataset,
               data_source: DataConfig | None) -> RunArgs:
    """The run's config as config.yaml records it, validated: `args` with the model's name and the reward names
    actually given (a model object is named by its name_or_path, as an export names its base).

    `data_source`: the recipe section the datasets were built from (`eggroll-llm train`), kept as it is. None: the
    datasets came as objects, so `data:` records their descriptions (describe_dataset) instead of a task, and a
    data.* key that would have built them (RECIPE_DATA_KEYS) is refused rather than ignored.
    """
    name = model if isinstance(model, str) else getattr(model, "name_or_path", "") or args.model.name
    data = args.data
    if data_source is None:
        check_prompts(train_dataset, "train_dataset")  # what is described below must be a dataset
        # the defaults, or what a config of an earlier run of objects holds (resuming one passes it back)
        default = (DataConfig(task=None, train_dataset=data.train_dataset) if data.train_dataset is not None
                   else DataConfig())
        changed = [key for key in RECIPE_DATA_KEYS if getattr(data, key) != getattr(default, key)]
        if changed:
            raise ConfigError(f"data.{changed[0]} is {getattr(data, changed[0])!r}, but the datasets came as objects "
                              "(train_dataset, eval_dataset), which data.* does not build; shape the datasets "
                              f"themselves (e.g. eval_dataset.select(range(n)) for eval_limit) and leave data."
                              f"{changed[0]} at its default")
        if args.rewards not in (RunArgs().rewards, rewards.names):
            raise ConfigError(f"args.rewards is {args.rewards!r}, but the Python API scores with reward_funcs "
                              f"({', '.join(rewards.names)}); pass the rewards as reward_funcs and leave args.rewards "
                              "at its default")
        data = dataclasses.replace(data, task=None, data_path=None, train_dataset=describe_dataset(train_dataset),
                                   eval_dataset=describe_dataset(eval_dataset))
    args = dataclasses.replace(args, rewards=rewards.names, model=dataclasses.replace(args.model, name=name),
                               data=data)
    validate(args)
    return args


def wants_accuracy(rewards: RewardSet, data: DataConfig) -> bool:
    """Whether held-out evaluation reports eval_accuracy: an answer-checking reward or a GSM8K-style task asks."""
    return rewards.wants_accuracy or data.task in QA_TASKS


def model_and_tokenizer(model, processing_class, args: RunArgs, device: str, dry_run=None):
    """(model, tokenizer) of a trainer: a name is loaded with args.model's settings (or built at random for a
    `dry_run`, a config.DryRun); the tokenizer is `processing_class`, else the one of the model's name."""
    if isinstance(model, str):
        model, loaded = load_base(args.model, device, args.seed, dry_run)
        processing_class = processing_class or loaded
    tokenizer = processing_class or load_tokenizer(args.model.name, trust_remote_code=args.model.trust_remote_code)
    return model, tokenizer


def _unique(labels: list[str]) -> list[str]:
    """Labels made distinct with #2, #3 (two rewards may share a __name__, e.g. two lambdas)."""
    seen: dict[str, int] = {}
    out = []
    for label in labels:
        seen[label] = seen.get(label, 0) + 1
        out.append(label if seen[label] == 1 else f"{label}#{seen[label]}")
    return out


def hide_progress_bars() -> None:
    """No progress bars from transformers (loading weights) or datasets (map, reading files): `disable_tqdm` asks
    for none, not only for the trainer's own."""
    from transformers.utils import logging as transformers_logging

    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()
