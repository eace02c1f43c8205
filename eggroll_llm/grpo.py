"""The GRPO baseline (docs/design.md §6): TRL's GRPOTrainer fed EGGROLL's model, prompts, rewards, budget and
evaluation.

Why TRL rather than a loop of our own: a baseline is only convincing if it is the implementation people run
(group-relative advantages, clipped policy ratio, TRL's default DAPO token-level loss). This file only wires it into
the project's run directory so `compare` reads both methods alike. `GRPOBaselineTrainer` takes what
`EggrollTrainer` takes (inputs.py):
- the model (a name, folder or Hub id, or a loaded model) and its tokenizer;
- the datasets, passed to TRL as they are (text or conversational prompts; every other column reaches the rewards);
- the reward functions and reward_weights (TRL sums them the same way; TRL's stock accuracy reward would score
  `#### 72` as 0, the project's gsm8k reward does not);
- the completion budget (`generation.max_new_tokens`), the held-out evaluation (`held_out_metrics`, greedy, through
  `HFEngine` on the model being trained, at step 0 and every `eval_every` steps) and metrics.jsonl's keys.
Different by necessity: completions are sampled (temperature > 0: GRPO explores by sampling, EGGROLL by parameter
noise under greedy decoding) and updates are AdamW steps on policy gradients.

Budget accounting counts what TRL generated, not an estimate: the reward functions are wrapped, and TRL hands them
`completion_ids` (cut after the first EOS, EOS included — the same count as `Completion.num_tokens`).

    eggroll-llm train recipes/tiny-arith-grpo.yaml
"""

from __future__ import annotations

import functools
import json
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import TrainerCallback, TrainingArguments

from .config import DataConfig, DryRun, GRPOBaselineConfig, Recipe, to_dict, trainer_args, validate
from .engine.hf import HFEngine
from .evaluate import held_out_metrics
from .fitness import check_scores
from .inputs import (
    PromptSet,
    RewardSet,
    hide_progress_bars,
    model_and_tokenizer,
    prompt_budget,
    run_config,
    wants_accuracy,
)
from .interrupt import Interrupted, StopSignals
from .io import atomic_directory, fsync_file
from .models import default_device
from .rundir import prepare_run_dir
from .runlog import (
    BUDGET_CLOCKS,
    MetricsLog,
    RunTotals,
    TrainerState,
    TrainOutput,
    open_trackers,
    peak_memory_mb,
    train_output,
    trainer_state,
)

# transformers renamed TrainingArguments.gradient_checkpointing (the old name warns); older releases know only it
_CHECKPOINTING = ("activation_checkpointing" if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
                  else "gradient_checkpointing")


def check_grpo(config: GRPOBaselineConfig | Recipe) -> GRPOBaselineConfig:
    """Refuse a GRPO run that TRL would reject or silently reshape, before any model or data is loaded; returns the
    trainer config (a Recipe of method grpo resolved). Each section checks itself where it is built; this adds the
    rules that span sections (GRPOBaselineConfig.cross_checks)."""
    config = trainer_args(config, GRPOBaselineConfig)
    validate(config)
    return config


class RolloutTally:
    """The reward functions, wrapped to count what TRL generated and to keep their weighted, summed scores.

    TRL calls each reward function once per generation batch; the first one counts completions, their tokens and
    their prompts' tokens (`prompt_tokens(prompt)`), every one adds its weighted scores. `take()` returns and clears
    what one update generated.
    """

    def __init__(self, rewards: RewardSet, prompt_tokens: Callable[[object], int]):
        self.reward_fns = [self._wrap(fn, label, index) for index, (fn, label) in
                           enumerate(zip(rewards.funcs, rewards.labels))]
        self.weights, self.prompt_tokens = rewards.weights, prompt_tokens
        self._scores: list[list[torch.Tensor]] = [[] for _ in rewards.funcs]
        self._tokens = self._prompt_tokens = 0

    def _wrap(self, fn: Callable, label: str, index: int) -> Callable:
        @functools.wraps(fn)  # TRL logs rewards/<__name__>/mean: keep the functions' own names
        def counted(prompts, completions, completion_ids, **kwargs):
            scores = fn(prompts, completions, completion_ids=completion_ids, **kwargs)
            self._scores[index].append(check_scores(scores, len(completions), label))
            if index == 0:
                self._tokens += sum(len(ids) for ids in completion_ids)
                self._prompt_tokens += sum(self.prompt_tokens(p) for p in prompts)
            return scores

        if not hasattr(counted, "__name__"):  # a callable object: TRL names rewards by __name__
            counted.__name__ = label
        return counted

    def take(self) -> tuple[torch.Tensor, int, int]:
        """(weighted reward sum of every completion since the last take [completions], their tokens, their prompts'
        tokens), then clear."""
        # [functions, completions] -> [completions]
        per_fn = torch.stack([torch.cat(scores) for scores in self._scores])
        scores = (torch.tensor(self.weights)[:, None] * per_fn).sum(0)
        tokens, prompt_tokens, self._tokens, self._prompt_tokens = self._tokens, self._prompt_tokens, 0, 0
        self._scores = [[] for _ in self._scores]
        return scores, tokens, prompt_tokens


class RunLogCallback(TrainerCallback):
    """metrics.jsonl for a TRL run with EGGROLL's keys, held-out evaluation, and the max_wall_s stop.

    Training time is on_step_begin..on_step_end: generation, rewards, loss, backward and the optimizer step, as in
    EGGROLL's `step_s`; evaluation, logging and checkpoint writing happen after it and are not counted.
    """

    def __init__(self, log: MetricsLog, tally: RolloutTally, held_out: Callable[[torch.nn.Module, int], dict],
                 totals: RunTotals, eval_every: int, max_wall_s: float | None, stop: StopSignals,
                 clock: Callable[[], float] = time.perf_counter):
        self.log, self.tally, self.held_out, self.totals = log, tally, held_out, totals
        self.eval_every, self.max_wall_s, self.stop, self.clock = eval_every, max_wall_s, stop, clock
        self._start = 0.0

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step == 0:  # a resumed run already holds its step-0 record
            self.log.log({**RunTotals().record(), **parameter_counts(model), **self.held_out(model, 0)})

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = self.clock()

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step_s = self.clock() - self._start
        scores, tokens, prompt_tokens = self.tally.take()
        self.totals = self.totals.advance(step_s, len(scores), tokens, prompt_tokens)
        record = {**self.totals.record(), "reward_mean": float(scores.mean()), "reward_std": float(scores.std()),
                  "step_s": round(step_s, 3),
                  "tokens_per_s": round(tokens / step_s, 1), "peak_mem_mb": round(peak_memory_mb(args.device), 1)}
        out_of_time = self.max_wall_s is not None and self.totals.wall_s >= self.max_wall_s
        # the equal-budget stop, or a signal (interrupt.py): save, so the run ends on a resumable checkpoint
        if out_of_time or self.stop.requested is not None:
            control.should_training_stop = control.should_save = True
        if state.global_step % self.eval_every == 0 or state.global_step >= state.max_steps or out_of_time:
            record.update(self.held_out(model, state.global_step))
        self.log.log(record)
        if control.should_save or state.global_step % args.save_steps == 0 or state.global_step >= state.max_steps:
            fsync_file(self.log.path)  # this step's record reaches the disk before the checkpoint that follows it


def parameter_counts(model: torch.nn.Module) -> dict:
    """model_params (the base model's, LoRA factors aside) and trainable_params (what the optimizer updates), as
    EGGROLL logs them, for compare's FLOPs estimate."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    lora = sum(p.numel() for name, p in model.named_parameters() if "lora_" in name)
    return {"model_params": total - lora, "trainable_params": trainable}


def _restore(run_dir: Path, log: MetricsLog) -> tuple[str | None, RunTotals]:
    """The latest HF Trainer checkpoint and the run's totals at its step; metrics past it are dropped."""
    from transformers.trainer_utils import get_last_checkpoint

    folder = run_dir / "checkpoints"
    checkpoint = get_last_checkpoint(str(folder)) if folder.is_dir() else None
    if checkpoint is None:
        log.truncate_after(-1)  # nothing to resume from: start over with an empty log
        return None, RunTotals()
    step = json.loads((Path(checkpoint) / "trainer_state.json").read_text())["global_step"]
    log.truncate_after(step)
    last = log.read()[-1]
    return checkpoint, RunTotals.from_dict(last)


class GRPOBaselineTrainer:
    """GRPO with TRL's GRPOTrainer, taking what EggrollTrainer takes; args: a GRPOBaselineConfig (TRL's GRPOConfig
    names) or a Recipe with method: grpo.

    model: a name, folder or Hub id (loaded with args.model's dtype and device), or a loaded causal LM. reward_funcs,
    train_dataset, eval_dataset, processing_class, dry_run: as EggrollTrainer's. The run directory has EGGROLL's
    layout and metrics keys; a LoRA run (args.lora_rank > 0) leaves its PEFT adapter in adapter/, full fine-tuning
    the whole model in model/.
    """

    def __init__(self, model, reward_funcs, train_dataset, eval_dataset=None,
                 args: GRPOBaselineConfig | Recipe | None = None, processing_class=None,
                 data_source: DataConfig | None = None, dry_run: DryRun | None = None):
        args = trainer_args(args or GRPOBaselineConfig(), GRPOBaselineConfig)
        if dry_run is not None:
            dry_run.check(args)
        self.dry_run = dry_run
        if args.disable_tqdm:
            hide_progress_bars()
        self.rewards = RewardSet(reward_funcs, args.reward_weights)
        self.args = args = run_config(args, model, self.rewards, train_dataset, eval_dataset, data_source)
        self.accuracy = wants_accuracy(self.rewards, args.data)
        self.state, self.training_loss = TrainerState(), None
        self.device = default_device(args.model.device)
        self.model, self.tokenizer = model_and_tokenizer(model, processing_class, args, self.device, dry_run)
        budget = prompt_budget(self.model, args.generation.max_new_tokens)
        PromptSet(train_dataset, self.tokenizer, "train_dataset", budget)  # prompts render and fit the context
        self.train_dataset = train_dataset  # TRL reads it as it is
        self.eval_set = (PromptSet(eval_dataset, self.tokenizer, "eval_dataset", budget) if eval_dataset is not None
                         else None)

    def held_out(self, policy: torch.nn.Module, step: int) -> dict:
        """held_out_metrics of the policy being trained; per-problem records in the run's eval/step-NNNNNN.jsonl."""
        from peft import PeftModel

        if self.eval_set is None:
            return {}
        # A PeftModel's forward hides `logits_to_keep`; its base model (LoRA layers injected, active) keeps it.
        engine = HFEngine(policy.get_base_model() if isinstance(policy, PeftModel) else policy, self.tokenizer,
                          max_batch_tokens=self.args.generation.max_batch_tokens)
        return held_out_metrics(engine, self.eval_set, self.rewards,
                                max_new_tokens=self.args.generation.max_new_tokens, accuracy=self.accuracy,
                                records_path=Path(self.args.output_dir) / "eval" / f"step-{step:06d}.jsonl")

    def train(self, resume_from_checkpoint: bool = False) -> TrainOutput:
        """Run (or resume) the GRPO run (a run directory laid out as EGGROLL's); returns a TrainOutput, and
        `self.state.log_history` holds the records of metrics.jsonl, as EggrollTrainer's.

        A SIGINT or SIGTERM ends the current step, saves it and raises interrupt.Interrupted (see interrupt.py).
        """
        config, lora = self.args, self.args.lora_rank
        run_dir, lock = prepare_run_dir(config, resume_from_checkpoint, dry_run=self.dry_run)
        log = MetricsLog(run_dir / "metrics.jsonl", open_trackers(config.report_to, run_dir, to_dict(config)))
        try:
            with StopSignals() as stop:
                trainer = self._trl_trainer(run_dir, log, resume_from_checkpoint, stop)
                if stop.requested is not None:
                    raise Interrupted(trainer.state.global_step, stop.requested)
            # LoRA: the PEFT adapter folder, as EGGROLL's adapter/. Full fine-tuning has no adapter: the whole model
            # (safetensors) and its tokenizer go to model/, loadable by `eggroll-llm eval --model RUN/model`.
            with atomic_directory(run_dir / ("adapter" if lora else "model"), overwrite=True) as folder:
                trainer.model.save_pretrained(folder)
                if not lora:
                    self.tokenizer.save_pretrained(folder)
        finally:
            log.close()
            lock.release()
            self.state = trainer_state(log)
        return train_output(run_dir, self.state.log_history, config.max_steps, self.training_loss)

    def _trl_trainer(self, run_dir: Path, log: MetricsLog, resume: bool, stop: StopSignals):
        """Build TRL's GRPOTrainer with the run's callback and train it (until done, or a stop request)."""
        from peft import LoraConfig
        from transformers import PrinterCallback
        from trl import GRPOConfig, GRPOTrainer

        config, gen = self.args, self.args.generation
        model, tokenizer = self.model, self.tokenizer
        model.requires_grad_(config.lora_rank == 0)  # LoRA: PEFT unfreezes its own factors
        checkpoint, totals = _restore(run_dir, log) if resume else (None, RunTotals())
        prompt_lengths: dict[str, int] = {}

        def prompt_tokens(prompt) -> int:  # TRL tokenizes the rendered prompt without special tokens
            key = json.dumps(prompt) if not isinstance(prompt, str) else prompt
            if key not in prompt_lengths:
                text = prompt if isinstance(prompt, str) else tokenizer.apply_chat_template(
                    prompt, tokenize=False, add_generation_prompt=True)
                prompt_lengths[key] = len(tokenizer(text, add_special_tokens=False)["input_ids"])
            return prompt_lengths[key]

        tally = RolloutTally(self.rewards, prompt_tokens)
        on_cpu = torch.device(self.device).type == "cpu"
        args = GRPOConfig(
            output_dir=str(run_dir / "checkpoints"), seed=config.seed, data_seed=config.seed,
            max_steps=config.max_steps,
            # One generation batch = one update: generation_batch_size completions (num_generations per prompt), split
            # into gradient_accumulation_steps micro-batches (TRL's steps_per_generation defaults to that count).
            per_device_train_batch_size=config.per_device_train_batch_size,
            gradient_accumulation_steps=config.gradient_accumulation_steps, num_generations=config.num_generations,
            max_completion_length=gen.max_new_tokens, temperature=config.temperature, top_p=gen.top_p, beta=config.beta,
            learning_rate=config.learning_rate, lr_scheduler_type="constant",  # a wall-clock stop must not meet decay
            **{_CHECKPOINTING: config.gradient_checkpointing}, reward_weights=self.rewards.weights,
            # TRL defaults bf16 to True; train in the model's own dtype instead (bf16 autocast only for bf16 on GPU).
            use_cpu=on_cpu, bf16=not on_cpu and config.model.dtype == "bfloat16", fp16=False,
            save_strategy="steps", save_steps=config.save_every, save_total_limit=2,
            eval_strategy="no", logging_steps=config.eval_every, report_to="none",
            disable_tqdm=config.disable_tqdm, dataloader_num_workers=0,
        )
        peft_config = None
        if config.lora_rank:
            # "all-linear" = every linear layer but the output head: EGGROLL's default targets. alpha = 2r (a common
            # choice); with Adam the scale trades against learning_rate, so it is not a separate knob.
            peft_config = LoraConfig(r=config.lora_rank, lora_alpha=2 * config.lora_rank, target_modules="all-linear",
                                     task_type="CAUSAL_LM")
        callback = RunLogCallback(log, tally, self.held_out, totals, config.eval_every, config.max_wall_s, stop,
                                  BUDGET_CLOCKS[config.budget_clock])
        with warnings.catch_warnings():
            # raised inside TRL's own calls into transformers (old keyword names); nothing a user can change
            old_names = r"past_key_values|is_gradient_checkpointing|gradient_checkpointing_(en|dis)able"
            warnings.filterwarnings("ignore", message=f"`({old_names})` is deprecated", category=FutureWarning)
            trainer = GRPOTrainer(model=model, reward_funcs=tally.reward_fns, args=args,
                                  train_dataset=self.train_dataset, processing_class=tokenizer, callbacks=[callback],
                                  peft_config=peft_config)
            if config.disable_tqdm:
                trainer.remove_callback(PrinterCallback)  # it prints every log dict when the progress bar is off
            self.training_loss = trainer.train(resume_from_checkpoint=checkpoint).training_loss
        return trainer
