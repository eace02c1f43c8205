"""Run configuration: `EggrollConfig`, typed dataclasses with one help string per field.

The same object configures the Python API (`EggrollTrainer(..., args=EggrollConfig(...))`) and a YAML recipe
(`eggroll-llm train RECIPE.yaml --es.sigma 0.01`): every recipe key maps 1:1 to a field here, and defaults live only
here. An unknown key is an error that names the nearest valid key, a value of the wrong type names the field, and
each section refuses values that cannot work (types, choices, finite numbers in sane ranges) where it is built, in
`__post_init__`; `validate` keeps the rules that span sections. All of it runs before anything is written. The GRPO
baseline's section, `GRPOBaselineConfig`, names its fields as TRL's GRPOConfig does.

    eggroll-llm train recipes/tiny-arith-eggroll.yaml --es.sigma 0.01 --max_steps 50
    EggrollConfig(output_dir="runs/x", max_steps=50, es={"sigma": 0.01})
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPORT_TO = ("none", "tensorboard", "wandb", "all")
DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A recipe or override that does not fit the config; the message names the key and the fix."""


def _help(text: str, default=dataclasses.MISSING, factory=dataclasses.MISSING):
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class ModelConfig:
    name: str = _help("embedded name (tiny-arith, tiny-countdown), local folder or Hub id", "tiny-arith")
    dtype: str = _help("compute dtype of the frozen base weights: float32, bfloat16 or float16", "float32")
    device: str | None = _help("cpu, cuda, cuda:1 ...; default: cuda when available, else cpu", None)
    trust_remote_code: bool = _help("allow model code from the Hub (off unless you ask)", False)
    dry_run_random_init: bool = _help("build a random-init model of the same architecture instead of loading "
                                      "weights (no download for the recipes' models: see models.ARCHS); set by "
                                      "`train --dry_run`", False)
    dry_run_shrink: bool = _help("with dry_run_random_init: 2 layers, width 64, same model class (a CPU-sized "
                                 "check); set by `train --dry_run tiny`", False)
    adapter: str | None = _help("PEFT LoRA adapter (folder or Hub id) to start from: lora_B·scaling and lora_Aᵀ "
                                "become U and V (eggroll only; on --resume the checkpoint's adapter is used)", None)

    def __post_init__(self):
        check_section(self, "model.", lambda: [
            (self.dtype in DTYPES, f"model.dtype must be {', '.join(DTYPES[:-1])} or {DTYPES[-1]}, got {self.dtype!r}"),
            (self.dry_run_random_init or not self.dry_run_shrink,
             "model.dry_run_shrink shrinks a random-init model: set model.dry_run_random_init too (or use "
             "--dry_run tiny)"),
        ])


@dataclass
class DataConfig:
    task: str | None = _help("built-in task: tiny-arith (generated), gsm8k, countdown (generated, or data_path with "
                             "nums/target columns); null: your own dataset at data_path, with a prompt column",
                             "tiny-arith")
    data_path: str | None = _help("local jsonl/json/parquet/csv file or folder, or a Hub dataset id; gsm8k default: "
                                  "openai/gsm8k; needed when task is null", None)
    prompt_column: str = _help("task null: the column holding each prompt (text, or a list of chat messages); every "
                               "other column reaches the reward functions as a keyword", "prompt")
    train_split: str = _help("split the training prompts come from", "train")
    eval_split: str = _help("held-out split for periodic evaluation", "validation")
    eval_limit: int = _help("held-out examples per evaluation", 200)
    few_shot: int = _help("worked train examples shown before each question (tiny-arith, gsm8k)", 0)
    long_prompts: str = _help("a prompt that does not fit beside generation.max_new_tokens in the model's context: "
                              "error (refused before the run starts) or truncate (keep its last tokens; EGGROLL "
                              "only)", "error")
    train_dataset: dict | None = _help("set by the trainer, not by recipes: the description (fingerprint, num_rows, "
                                       "columns) of a train_dataset given as a Python object", None)
    eval_dataset: dict | None = _help("set by the trainer: the description of an eval_dataset given as an object",
                                      None)

    def __post_init__(self):
        from .data import TASK_BUILDERS  # the tasks the data layer can build (data.py imports `datasets`: lazily)

        check_section(self, "data.", lambda: [
            (self.task in TASK_BUILDERS, f"data.task must be one of {', '.join(map(str, TASK_BUILDERS))} (null: your "
                                         f"own dataset at data.data_path), got {self.task!r}"),
            (self.task is not None or self.data_path is not None or self.train_dataset is not None,
             "data.task is null, so the prompts come from your own dataset: set data.data_path to a local file or "
             "folder or a Hub dataset id"),
            (self.eval_limit >= 1, f"data.eval_limit must be >= 1, got {self.eval_limit}"),
            (self.few_shot >= 0, f"data.few_shot must be >= 0, got {self.few_shot}"),
            (self.long_prompts in ("error", "truncate"),
             f"data.long_prompts must be error or truncate, got {self.long_prompts!r}"),
        ])


@dataclass
class GenerationConfig:
    engine: str = _help("generation backend: hf (plain PyTorch) or vllm (members as LoRA adapters; needs the vllm "
                        "extra: pip install 'eggroll_llm[vllm]')", "hf")
    max_new_tokens: int = _help("completion budget per prompt", 64)
    temperature: float = _help("0 = greedy (the paper's choice: exploration comes from parameter noise)", 0.0)
    top_p: float = _help("nucleus sampling threshold when temperature > 0", 1.0)
    max_batch_tokens: int = _help("hf engine: memory budget of one micro-batch, rows x (prompt + new tokens)", 65536)
    gpu_memory_utilization: float = _help("vllm engine: fraction of GPU memory vLLM may claim; the trainer's own "
                                          "copy of the model needs the rest", 0.5)

    def __post_init__(self):
        check_section(self, "generation.", lambda: [
            (self.engine in ("hf", "vllm"), f"generation.engine must be hf or vllm, got {self.engine!r}"),
            (self.max_new_tokens >= 1, "generation.max_new_tokens must be >= 1"),
            (self.temperature >= 0, f"generation.temperature must be >= 0 (0 = greedy), got {self.temperature}"),
            (0 < self.top_p <= 1, f"generation.top_p must be in (0, 1] (1 = off), got {self.top_p}"),
            (self.max_batch_tokens >= 1, f"generation.max_batch_tokens must be >= 1, got {self.max_batch_tokens}"),
            (0 < self.gpu_memory_utilization <= 1,
             f"generation.gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}"),
        ])


@dataclass
class ESConfig:
    strategy: str = _help("eggroll (low-rank noise, batched population generation), openai_es (full-rank Gaussian "
                          "noise: full-parameter ES as in Qiu et al. 2025) or package.module:Class (a "
                          "eggroll_llm.strategy.Strategy)", "eggroll")
    scoring: str = _help("batched: every member in one generation (perturbed forward); per_member: each member's "
                         "noise written into the weights in turn, plain generation, centre restored (full-rank "
                         "strategies); auto: per_member for openai_es, else batched", "auto")
    population_size: int = _help("members per step (N); even when antithetic", 32)
    sigma: float = _help("perturbation scale σ (paper: 1e-3..2e-3 on real LLMs; larger on tiny models)", 0.02)
    rank: int = _help("rank r of each member's perturbation A Bᵀ (paper: 1)", 1)
    antithetic: bool = _help("members 2k, 2k+1 share noise with opposite signs", True)
    noise_reuse: int = _help("steps that share one noise draw (1 = fresh noise every step)", 1)
    lr: float = _help("learning rate α of the ES step (1/σ is divided out, so α does not scale with σ or N)", 0.01)
    momentum: float = _help("SGD momentum (0 = plain SGD, the paper's choice)", 0.0)
    weight_decay: float = _help("decoupled decay of the adapter per step", 0.0)
    decay_to_base: bool = _help("in place: es.weight_decay pulls the weights toward the base model's instead of 0, "
                                "θ ← θ − lr·wd·(θ − θ_base) each step (an adapter's decay already pulls ΔW toward 0); "
                                "a retention lever (docs/es.md)", False)
    fitness: str = _help("group_centered (paper §6.3), centered_rank, or none (the summed rewards as they are)",
                         "group_centered")
    sigma_scale: str = _help("absolute: every layer's noise is σ and its step lr; weight_rms: σ·RMS(W) and lr·RMS(W) "
                             "per layer, so one σ is the same relative change everywhere", "absolute")
    optimizer: str = _help("sgd (the paper's; momentum and weight_decay apply) or adam (Adam's normalised moments of "
                           "the ES gradient; needs adapter_rank full)", "sgd")
    adapter_rank: int | str | None = _help("rank R of the fp32 adapter the updates fold into, 'full' (dense delta), "
                                           "or null: the target weights themselves are θ (in place; the run "
                                           "exports a merged model)", 8)
    target_modules: list[str] | str | None = _help("PEFT-style names or a regex; default: every linear layer in the "
                                                   "transformer blocks", None)
    members_per_prompt: int = _help("members answering the same prompts (a fitness group); divides population_size", 32)
    prompts_per_member: int = _help("prompts each member answers per step", 8)
    samples_per_prompt: int = _help("sampled completions per (member, prompt), combined by es.aggregate into one "
                                    "score (> 1 needs generation.temperature > 0)", 1)
    aggregate: str = _help("how the samples of one (member, prompt) become its score: mean, pass_at_k (the best "
                           "of K) or majority_vote (the reward of the most common extracted answer)", "mean")
    answer_fn: str | None = _help("majority_vote: the answer extractor, a built-in task name (gsm8k, tiny-arith, "
                                  "countdown) or package.module:function (completion text -> answer or None); "
                                  "default: data.task's", None)
    sigma_schedule: str = _help("σ over the run: constant, linear or cosine (decaying to a tenth of es.sigma at "
                                "max_steps)", "constant")
    lr_schedule: str = _help("lr over the run: constant, linear or cosine (decaying to 0 at max_steps)", "constant")
    warmup_steps: int = _help("steps of linear lr warm-up from 0 before es.lr_schedule starts", 0)

    def __post_init__(self):
        """The es.* values alone, checked where the section is built (a recipe, or EggrollConfig(es={...}));
        rules that involve other sections are config.validate's."""
        from .es import SIGMA_SCALES
        from .fitness import FITNESS_METHODS
        from .levers import AGGREGATES, SCHEDULES, SCORINGS
        from .optim import OPTIMIZERS
        from .strategy import STRATEGIES

        es, bad_regex = self, _regex_error(self.target_modules)
        check_section(self, "es.", lambda: [
            (0 < es.sigma <= 1, f"es.sigma must be in (0, 1] (a perturbation of the weights' own scale; the paper "
                                f"uses ~1e-3 on real LLMs), got {es.sigma}"),
            (es.rank >= 1, f"es.rank must be >= 1, got {es.rank}"),
            (es.population_size >= 1, f"es.population_size must be >= 1, got {es.population_size}"),
            (not es.antithetic or es.population_size % 2 == 0,
             f"es.population_size {es.population_size} is odd; antithetic sampling pairs members: use an even "
             "population_size or es.antithetic: false"),
            (es.noise_reuse >= 1, f"es.noise_reuse must be >= 1, got {es.noise_reuse}"),
            (es.adapter_rank is None or es.adapter_rank == "full"
             or (isinstance(es.adapter_rank, int) and es.adapter_rank >= 1),
             f"es.adapter_rank must be a positive integer, 'full' or null (in place), got {es.adapter_rank!r}"),
            (bad_regex is None, f"es.target_modules {es.target_modules!r} is not a valid regular expression "
                                f"({bad_regex}); fix the pattern, or give a list of module names"),
            (es.strategy in STRATEGIES or ":" in es.strategy,
             f"es.strategy must be one of {', '.join(STRATEGIES)} or package.module:Class, got {es.strategy!r}"),
            (es.scoring in SCORINGS, f"es.scoring must be one of {', '.join(SCORINGS)}, got {es.scoring!r}"),
            (es.samples_per_prompt >= 1, f"es.samples_per_prompt must be >= 1, got {es.samples_per_prompt}"),
            (es.aggregate in AGGREGATES,
             f"es.aggregate must be one of {', '.join(AGGREGATES)}, got {es.aggregate!r}"),
            (es.sigma_schedule in SCHEDULES and es.lr_schedule in SCHEDULES,
             f"es.sigma_schedule and es.lr_schedule must be one of {', '.join(SCHEDULES)}, got "
             f"{es.sigma_schedule!r} and {es.lr_schedule!r}"),
            (es.warmup_steps >= 0, f"es.warmup_steps must be >= 0, got {es.warmup_steps}"),
            (es.members_per_prompt >= 1 and es.population_size % es.members_per_prompt == 0,
             f"es.members_per_prompt {es.members_per_prompt} must divide es.population_size {es.population_size}"),
            (not es.antithetic or es.members_per_prompt % 2 == 0,
             "es.members_per_prompt must be even with antithetic sampling (both members of a pair answer the same "
             "prompts)"),
            (es.prompts_per_member >= 1, f"es.prompts_per_member must be >= 1, got {es.prompts_per_member}"),
            (es.lr > 0, f"es.lr must be > 0, got {es.lr}"),
            (0 <= es.momentum < 1, f"es.momentum must be in [0, 1), got {es.momentum}"),
            (es.weight_decay >= 0 and es.lr * es.weight_decay < 1,
             f"es.weight_decay must be >= 0 with es.lr * es.weight_decay < 1 (each step keeps 1 - lr * "
             f"weight_decay of the adapter), got weight_decay {es.weight_decay} at lr {es.lr}"),
            (es.fitness in FITNESS_METHODS,
             f"es.fitness must be one of {', '.join(FITNESS_METHODS)}, got {es.fitness!r}"),
            (es.sigma_scale in SIGMA_SCALES,
             f"es.sigma_scale must be {' or '.join(SIGMA_SCALES)}, got {es.sigma_scale!r}"),
            (es.optimizer in OPTIMIZERS, f"es.optimizer must be {' or '.join(OPTIMIZERS)}, got {es.optimizer!r}"),
            (es.optimizer == "sgd" or es.momentum == 0,
             "es.momentum is SGD's; es.optimizer adam keeps its own moments: set es.momentum: 0"),
            (not es.decay_to_base or es.weight_decay > 0,
             "es.decay_to_base sets where es.weight_decay pulls; give es.weight_decay > 0 (the pull per step)"),
        ])


@dataclass
class GRPOBaselineConfig:
    """The GRPO baseline's hyper-parameters (recipe section `grpo:`, used when method: grpo), named as TRL's
    GRPOConfig names them (learning_rate, num_generations, temperature, beta, gradient_accumulation_steps,
    gradient_checkpointing); prompts_per_step and lora_rank say what GRPOConfig's batch size and PEFT's LoraConfig
    are built from (grpo.py). Checks itself where it is built; the rules that span sections are grpo.check_grpo's."""

    prompts_per_step: int = _help("prompts answered per update; each gets num_generations sampled completions", 8)
    num_generations: int = _help("completions sampled per prompt: the group whose mean reward is the baseline "
                                 "(>= 2)", 8)
    temperature: float = _help("sampling temperature, > 0 (GRPO explores by sampling; generation.temperature is "
                               "EGGROLL's and is not used)", 1.0)
    learning_rate: float = _help("AdamW learning rate, held constant", 3e-4)
    lora_rank: int = _help("rank of a LoRA adapter on every linear layer of the blocks; 0 = full fine-tuning", 0)
    beta: float = _help("KL penalty towards the starting model (0 = none, as DAPO and TRL's default; > 0 keeps a "
                        "reference copy of the model)", 0.0)
    gradient_accumulation_steps: int = _help("micro-batches one update's completions are split into (less memory, "
                                             "same update)", 1)
    gradient_checkpointing: bool = _help("recompute activations in the backward pass (less memory, slower; for "
                                         "large models)", False)

    @property
    def completions(self) -> int:
        """Completions sampled per update: prompts_per_step x num_generations (TRL's generation batch)."""
        return self.prompts_per_step * self.num_generations

    def __post_init__(self):
        check_section(self, "grpo.", lambda: [
            (self.prompts_per_step >= 1, f"grpo.prompts_per_step must be >= 1, got {self.prompts_per_step}"),
            (self.num_generations >= 2, f"grpo.num_generations must be >= 2 (the group baseline needs two "
                                        f"completions of a prompt), got {self.num_generations}"),
            (self.gradient_accumulation_steps >= 1 and self.completions % self.gradient_accumulation_steps == 0,
             f"grpo.gradient_accumulation_steps {self.gradient_accumulation_steps} must divide the "
             f"{self.completions} completions of a step (prompts_per_step {self.prompts_per_step} x num_generations "
             f"{self.num_generations}); choose a divisor of {self.completions}"),
            (self.temperature > 0, f"grpo.temperature must be > 0 (GRPO needs different completions of a prompt to "
                                   f"compare), got {self.temperature}"),
            (self.learning_rate > 0, f"grpo.learning_rate must be > 0, got {self.learning_rate}"),
            (self.lora_rank >= 0, f"grpo.lora_rank must be >= 0 (0 = full fine-tuning), got {self.lora_rank}"),
            (self.beta >= 0, f"grpo.beta must be >= 0, got {self.beta}"),
        ])


@dataclass
class EggrollConfig:
    """Everything a run needs besides the model, rewards and data objects: what a recipe YAML holds.

    Nested sections accept their dataclass or a plain dict: `EggrollConfig(es={"sigma": 0.01})`.
    """

    method: str = _help("eggroll (this toolkit) or grpo (TRL baseline)", "eggroll")
    output_dir: str = _help("run directory: config.yaml, metrics.jsonl, checkpoints/, adapter/", "runs/default")
    seed: int = _help("fixes data order, noise and sampling: the same seed gives the same metrics", 0)
    max_steps: int = _help("stop after this many updates", 100)
    max_wall_s: float | None = _help("stop after this many seconds of training (evaluation excluded)", None)
    budget_clock: str = _help("how training seconds (wall_s, max_wall_s) are counted: wall (elapsed time) or process "
                              "(this process's CPU time: on a machine shared with other jobs, the budget a one-thread "
                              "run would have on a quiet one)", "wall")
    eval_every: int = _help("evaluate on the held-out split every K steps (and at the start and end)", 10)
    save_every: int = _help("write a resumable checkpoint every K steps (and at the end)", 10)
    distributed_timeout_s: float = _help("multi-process runs (eggroll): seconds a process waits for the others at "
                                         "a collective before the job fails with an error instead of hanging",
                                         1800.0)
    rewards: list[str] = _help("reward functions, summed with reward_weights: built-in names (gsm8k, gsm8k_strict, "
                               "format, countdown, countdown_format) or package.module:function import paths",
                               factory=lambda: ["gsm8k"])
    reward_weights: list[float] | None = _help("weight of each reward function in the sum (TRL's reward_weights); "
                                               "null: all 1", None)
    report_to: list[str] | str = _help("where per-step metrics go besides metrics.jsonl: none, tensorboard, wandb or "
                                       "all (those installed)", "none")
    disable_tqdm: bool = _help("no progress bar (metrics still go to metrics.jsonl)", False)
    model: ModelConfig = _help("the base model", factory=ModelConfig)
    data: DataConfig = _help("prompts and held-out data", factory=DataConfig)
    generation: GenerationConfig = _help("how completions are sampled", factory=GenerationConfig)
    es: ESConfig = _help("EGGROLL hyper-parameters", factory=ESConfig)
    grpo: GRPOBaselineConfig = _help("GRPO baseline hyper-parameters (TRL's GRPOTrainer; used when method: grpo)",
                              factory=GRPOBaselineConfig)

    def __post_init__(self):
        for f in dataclasses.fields(self):  # plain dicts for nested sections, as a recipe gives them
            value = getattr(self, f.name)
            if isinstance(value, dict):
                setattr(self, f.name, _build(type(f.default_factory()), value, f"{f.name}."))
        check_section(self, "", lambda: [
            (self.method in ("eggroll", "grpo"), f"method must be eggroll or grpo, got {self.method!r}"),
            (self.max_steps >= 1, f"max_steps must be >= 1, got {self.max_steps}"),
            (self.max_wall_s is None or self.max_wall_s > 0, "max_wall_s must be > 0 (or null for no limit)"),
            (self.budget_clock in budget_clocks(),
             f"budget_clock must be {' or '.join(budget_clocks())}, got {self.budget_clock!r}"),
            (self.eval_every >= 1 and self.save_every >= 1, "eval_every and save_every must be >= 1"),
            (self.distributed_timeout_s > 0, f"distributed_timeout_s must be > 0, got {self.distributed_timeout_s}"),
            (bool(self.rewards), "rewards must name at least one reward function"),
            (all(r in REPORT_TO for r in ([self.report_to] if isinstance(self.report_to, str) else self.report_to)),
             f"report_to must be one or more of {', '.join(REPORT_TO)}, got {self.report_to!r}"),
        ])


# Keys that only say how far, where or how a run goes, not what it trains: a resumed run may change them, and
# `compare` puts runs that differ only in these (and their seed) in one group. The one list of them.
RUN_ONLY_KEYS = frozenset({"output_dir", "max_steps", "max_wall_s", "eval_every", "save_every",
                           "distributed_timeout_s", "report_to", "disable_tqdm", "model.device"})


def is_run_only(dotted_key: str) -> bool:
    """Whether a dotted config key (or the section it lies in) is in RUN_ONLY_KEYS."""
    return dotted_key in RUN_ONLY_KEYS or dotted_key.split(".")[0] in RUN_ONLY_KEYS


def _check_type(value, annotation, key: str):
    """Coerce/validate a YAML value against a field annotation (str | None, int | str, list[str], ...)."""
    hint = typing.get_origin(annotation)
    options = typing.get_args(annotation) if hint in (typing.Union, types.UnionType) else (annotation,)
    for option in options:
        if option is type(None) and value is None:
            return None
        if option is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if option is float and isinstance(value, str):  # YAML 1.1 reads 2e-5 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if option is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if option in (str, bool, dict) and type(value) is option:
            return value
        if typing.get_origin(option) is list and isinstance(value, list):
            (item,) = typing.get_args(option)
            try:
                return [_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
            except ConfigError:
                pass
    lists = [o for o in options if typing.get_origin(o) is list]
    if lists and not isinstance(value, (list, dict)):  # `rewards: gsm8k`, `--rewards gsm8k`: a list of one
        try:
            return _check_type([value], lists[0], key)
        except ConfigError:
            pass
    names = " or ".join(_type_name(o) for o in options)
    raise ConfigError(f"{key} must be {names}, got {value!r}")


def _type_name(option) -> str:
    """'an int', 'a list of str', 'null': how an error names a field's type."""
    if option is type(None):
        return "null"
    if typing.get_origin(option) is list:
        return f"a list of {_type_name(typing.get_args(option)[0]).split(' ', 1)[1]}"
    name = getattr(option, "__name__", str(option))
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"


def budget_clocks() -> tuple[str, ...]:
    from .runlog import BUDGET_CLOCKS

    return tuple(BUDGET_CLOCKS)


def check_section(section, prefix: str, checks: typing.Callable[[], list[tuple[bool, str]]]) -> None:
    """A section's own checks, where it is built: field types (check_fields), finite floats, then `checks()` (called
    once the types are right), each an (ok, message naming the key and the fix) pair; the first that fails raises
    ConfigError."""
    check_fields(section, prefix)
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{prefix}{f.name} must be a finite number, got {value}")
    for ok, message in checks():
        if not ok:
            raise ConfigError(message)


def check_fields(section, prefix: str = "") -> None:
    """Every plain field of a config section checked against its annotation, in place (an int where a float is due
    becomes a float): `EggrollConfig(max_steps="10")` is refused with the key's name, as a recipe would be."""
    hints = typing.get_type_hints(type(section))
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if not dataclasses.is_dataclass(hints[f.name]):
            object.__setattr__(section, f.name, _check_type(value, hints[f.name], prefix + f.name))
        elif not isinstance(value, hints[f.name]):
            raise ConfigError(f"{prefix}{f.name} must be a {hints[f.name].__name__} or a dict of its keys, got "
                              f"{type(value).__name__} {value!r:.80}")


def _build(cls, values: dict, prefix: str = ""):
    if not isinstance(values, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'recipe'} must be a mapping of keys, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = sorted((f for f in fields if key.startswith(f) or f.startswith(key)), key=len, reverse=True)[:1] \
                or difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5)
            hint = (f"; did you mean {prefix}{close[0]}?" if close
                    else f"; valid keys: {', '.join(prefix + f for f in fields)}")
            raise ConfigError(f"unknown recipe key {prefix}{key}{hint}")
        if dataclasses.is_dataclass(hints[key]):
            kwargs[key] = _build(hints[key], value or {}, f"{prefix}{key}.")
        else:
            kwargs[key] = _check_type(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def parse_overrides(args: list[str]) -> dict:
    """`--es.sigma 0.002 --output_dir DIR` (or `--key=value`, or dashes: `--output-dir`) -> nested dict; values
    parsed as YAML scalars."""
    nested, it = {}, iter(args)
    for arg in it:
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --es.sigma 0.002")
        key, sep, raw = arg[2:].partition("=")
        if not sep:
            raw = next(it, None)
            if raw is None:
                raise ConfigError(f"override --{key} needs a value")
        *parents, leaf = key.replace("-", "_").split(".")  # --output-dir and --output_dir alike
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return nested


DRY_RUN_MODES = ("full", "tiny")
# `--dry_run tiny` also shrinks the work of the step, so every recipe's CPU check takes seconds
TINY_DRY_RUN = {"generation": {"max_new_tokens": 8},
                "es": {"population_size": 4, "members_per_prompt": 2, "prompts_per_member": 1},
                "grpo": {"prompts_per_step": 2, "num_generations": 2, "gradient_accumulation_steps": 1}}
# GSM8K-format problems written for this project (12 train, 4 test): a dry run's data when a gsm8k recipe names none
GSM8K_SAMPLE = Path(__file__).parent / "assets" / "gsm8k-sample"


def dry_run_overrides(mode: str, overrides: dict) -> dict:
    """What `train --dry_run [full|tiny]` changes in a recipe, under the user's own `overrides` (which still win).

    One step of a random-init model of the recipe's architecture (`tiny`: scaled down to run on a CPU, with a small
    population and 8-token completions: TINY_DRY_RUN), a 2-example held-out evaluation, a checkpoint, and a fresh
    temporary run directory unless --output_dir is given: it checks that the recipe, data, trainer and output wiring
    work end to end, not what the recipe learns. (dry_run_data supplies GSM8K data when the recipe names none.)
    """
    if mode not in DRY_RUN_MODES:
        raise ConfigError(f"--dry_run takes {' or '.join(DRY_RUN_MODES)}, got {mode!r}")
    dry = {"max_steps": 1, "max_wall_s": None, "eval_every": 1, "save_every": 1, "data": {"eval_limit": 2},
           "model": {"dry_run_random_init": True, "dry_run_shrink": mode == "tiny"}}
    if mode == "tiny":
        dry = _merge(dry, TINY_DRY_RUN)
    if "output_dir" not in overrides:
        dry["output_dir"] = tempfile.mkdtemp(prefix="eggroll-dry-run-")
    return _merge(dry, overrides)


def dry_run_data(config: EggrollConfig) -> EggrollConfig:
    """A dry run of a gsm8k recipe that names no data reads the shipped GSM8K_SAMPLE: no Hub, no data flag."""
    if config.data.task != "gsm8k" or config.data.data_path is not None:
        return config
    return dataclasses.replace(config, data=dataclasses.replace(config.data, data_path=str(GSM8K_SAMPLE)))


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> EggrollConfig:
    """A recipe YAML (or the defaults) with overrides applied, validated."""
    values = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe {path} does not exist; see recipes/ for examples")
        try:
            values = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"recipe {path} is not valid YAML: {err}") from err
    extra = parse_overrides(overrides) if isinstance(overrides, list) else (overrides or {})
    config = _build(EggrollConfig, _merge(values, extra))
    validate(config)
    return config




def _finite_floats(node, prefix: str = "") -> list[str]:
    """Dotted names of float fields holding NaN or ±inf (YAML reads .nan and .inf as floats)."""
    bad = []
    for f in dataclasses.fields(node):
        value = getattr(node, f.name)
        if dataclasses.is_dataclass(value):
            bad += _finite_floats(value, f"{prefix}{f.name}.")
        elif isinstance(value, float) and not math.isfinite(value):
            bad.append(f"{prefix}{f.name}")
    return bad


def validate(config: EggrollConfig) -> None:
    """The rules that span sections, raised before any work starts (and before anything is written); each section
    checks its own values where it is built (__post_init__)."""

    es, gen, data = config.es, config.generation, config.data
    not_finite = _finite_floats(config)
    if not_finite:
        raise ConfigError(f"{not_finite[0]} must be a finite number, got {_lookup(config, not_finite[0])}")
    checks = [
        # fields that the Python API resolves first (rewards from reward_funcs)
        (config.reward_weights is None or len(config.reward_weights) == len(config.rewards),
         f"reward_weights has {len(config.reward_weights or [])} entries for {len(config.rewards)} reward functions; "
         "give one weight per entry of rewards (or null for all 1)"),
        (es.samples_per_prompt == 1 or gen.temperature > 0,
         f"es.samples_per_prompt {es.samples_per_prompt} draws several completions per (member, prompt), which "
         "greedy decoding makes identical: set generation.temperature > 0 or es.samples_per_prompt: 1"),
        (es.aggregate != "majority_vote" or es.answer_fn is not None or data.task is not None,
         "es.aggregate majority_vote compares extracted answers: set es.answer_fn (a task name or "
         "package.module:function) for your own dataset"),
        (gen.engine == "hf" or (es.strategy == "eggroll" and es.adapter_rank is not None),
         "generation.engine vllm runs members as LoRA adapters: it needs es.strategy eggroll and an adapter "
         "(es.adapter_rank); use generation.engine: hf"),
        (es.sigma_scale == "absolute" or gen.engine == "hf",
         "es.sigma_scale weight_rms runs on the hf engine (the vllm engine writes member adapters at one σ)"),
        (config.method == "eggroll" or data.long_prompts == "error",
         "data.long_prompts: truncate is for EGGROLL runs; TRL's GRPOTrainer does not truncate prompts, so GRPO runs "
         "refuse prompts that do not fit: shorten them or lower generation.max_new_tokens"),
        (config.method == "eggroll" or gen.engine == "hf",
         f"generation.engine {gen.engine!r} is for eggroll runs; GRPO samples with TRL's GRPOTrainer "
         "and evaluates with the hf engine: use generation.engine: hf"),
        (gen.engine != "vllm" or not config.model.dry_run_random_init,
         "generation.engine: vllm loads the base weights from model.name, so it cannot run a random-init model "
         "(model.dry_run_random_init); use generation.engine: hf"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def _regex_error(pattern) -> str | None:
    """Why a target_modules string (a regex, PEFT's rule) does not compile; None when it does or is not a string."""
    if not isinstance(pattern, str):
        return None
    try:
        re.compile(pattern)
    except re.error as err:
        return str(err)
    return None


def _lookup(config, dotted: str):
    node = config
    for part in dotted.split("."):
        node = getattr(node, part)
    return node


def flatten(values: dict, prefix: str = "") -> dict:
    """A nested config dict as dotted keys: {"es": {"sigma": 0.1}} -> {"es.sigma": 0.1}."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def describe(cls=EggrollConfig, prefix: str = "") -> list[tuple[str, str, object]]:
    """(key, help, default) for every field, nested keys dotted: the reference table of recipe keys."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            rows += describe(type(default), f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", f.metadata.get("help", ""), default))
    return rows
