"""Run configuration: `EggrollConfig`, typed dataclasses with one help string per field.

The same object configures the Python API (`EggrollTrainer(..., args=EggrollConfig(...))`) and a YAML recipe
(`eggroll-llm train RECIPE.yaml --es.sigma 0.01`): every recipe key maps 1:1 to a field here, and defaults live only
here. An unknown key is an error that names the nearest valid key, a value of the wrong type names the field, and
`validate` refuses values that cannot work (choices, finite numbers in sane ranges) before anything is written.

    eggroll-llm train recipes/tiny-arith-eggroll.yaml --es.sigma 0.01 --max_steps 50
    EggrollConfig(output_dir="runs/x", max_steps=50, es={"sigma": 0.01})
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A recipe or override that does not fit the config; the message names the key and the fix."""


def _help(text: str, default=dataclasses.MISSING, factory=dataclasses.MISSING):
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata={"help": text})
    return field(default=default, metadata={"help": text})


@dataclass
class ModelConfig:
    name: str = _help("embedded name (tiny-arith), local folder or Hub id", "tiny-arith")
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


@dataclass
class GRPOSection:
    """GRPO baseline hyper-parameters (recipe section `grpo:`, used when method: grpo)."""

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
    grpo: GRPOSection = _help("GRPO baseline hyper-parameters (TRL's GRPOTrainer; used when method: grpo)",
                              factory=GRPOSection)

    def __post_init__(self):
        for f in dataclasses.fields(self):  # plain dicts for nested sections, as a recipe gives them
            value = getattr(self, f.name)
            if isinstance(value, dict):
                setattr(self, f.name, _build(type(f.default_factory()), value, f"{f.name}."))


# Keys that only say how far or how a run goes: a resumed run may change them.
RUN_ONLY_KEYS = frozenset({"output_dir", "max_steps", "max_wall_s", "eval_every", "save_every",
                           "distributed_timeout_s", "report_to", "disable_tqdm"})


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
        if option in (str, bool) and type(value) is option:
            return value
        if typing.get_origin(option) is list and isinstance(value, list):
            (item,) = typing.get_args(option)
            try:
                return [_check_type(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
            except ConfigError:
                pass
    names = " or ".join("null" if o is type(None) else getattr(o, "__name__", str(o)) for o in options)
    raise ConfigError(f"{key} must be {names}, got {value!r}")


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
    """`--es.sigma 0.002 --output_dir DIR` (or `--key=value`) -> nested dict; values parsed as YAML scalars."""
    nested, it = {}, iter(args)
    for arg in it:
        if not arg.startswith("--") or len(arg) == 2:
            raise ConfigError(f"unexpected argument {arg!r}; overrides look like --es.sigma 0.002")
        key, sep, raw = arg[2:].partition("=")
        if not sep:
            raw = next(it, None)
            if raw is None:
                raise ConfigError(f"override --{key} needs a value")
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return nested


DRY_RUN_MODES = ("full", "tiny")


def dry_run_overrides(mode: str, overrides: dict) -> dict:
    """What `train --dry_run [full|tiny]` changes in a recipe, under the user's own `overrides` (which still win).

    One step of a random-init model of the recipe's architecture (`tiny`: scaled down to run on a CPU), a 2-example
    held-out evaluation, a checkpoint, and a fresh temporary run directory unless --output_dir is given: it checks
    that the recipe, data, trainer and output wiring work end to end, not what the recipe learns.
    """
    if mode not in DRY_RUN_MODES:
        raise ConfigError(f"--dry_run takes {' or '.join(DRY_RUN_MODES)}, got {mode!r}")
    dry = {"max_steps": 1, "max_wall_s": None, "eval_every": 1, "save_every": 1, "data": {"eval_limit": 2},
           "model": {"dry_run_random_init": True, "dry_run_shrink": mode == "tiny"}}
    if "output_dir" not in overrides:
        dry["output_dir"] = tempfile.mkdtemp(prefix="eggroll-dry-run-")
    return _merge(dry, overrides)


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


REPORT_TO = ("none", "tensorboard", "wandb", "all")


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
    """Cross-field checks, raised before any work starts (and before anything is written)."""
    from .es import SIGMA_SCALES
    from .fitness import FITNESS_METHODS
    from .levers import AGGREGATES, SCHEDULES, SCORINGS
    from .optim import OPTIMIZERS
    from .runlog import BUDGET_CLOCKS
    from .strategy import STRATEGIES

    es, gen, data = config.es, config.generation, config.data
    not_finite = _finite_floats(config)
    if not_finite:
        raise ConfigError(f"{not_finite[0]} must be a finite number, got {_lookup(config, not_finite[0])}")
    report_to = [config.report_to] if isinstance(config.report_to, str) else config.report_to
    weights = config.reward_weights
    checks = [
        (config.method in ("eggroll", "grpo"), f"method must be eggroll or grpo, got {config.method!r}"),
        (config.max_steps >= 1, f"max_steps must be >= 1, got {config.max_steps}"),
        (config.max_wall_s is None or config.max_wall_s > 0, "max_wall_s must be > 0 (or null for no limit)"),
        (config.budget_clock in BUDGET_CLOCKS,
         f"budget_clock must be {' or '.join(BUDGET_CLOCKS)}, got {config.budget_clock!r}"),
        (config.eval_every >= 1 and config.save_every >= 1, "eval_every and save_every must be >= 1"),
        (config.distributed_timeout_s > 0, f"distributed_timeout_s must be > 0, got {config.distributed_timeout_s}"),
        (config.model.dtype in ("float32", "bfloat16", "float16"),
         f"model.dtype must be float32, bfloat16 or float16, got {config.model.dtype!r}"),
        (0 < es.sigma <= 1, f"es.sigma must be in (0, 1] (a perturbation of the weights' own scale; the paper uses "
                            f"~1e-3 on real LLMs), got {es.sigma}"),
        (es.rank >= 1, f"es.rank must be >= 1, got {es.rank}"),
        (es.population_size >= 1, f"es.population_size must be >= 1, got {es.population_size}"),
        (not es.antithetic or es.population_size % 2 == 0,
         f"es.population_size {es.population_size} is odd; antithetic sampling pairs members: use an even "
         "population_size or es.antithetic: false"),
        (es.noise_reuse >= 1, f"es.noise_reuse must be >= 1, got {es.noise_reuse}"),
        (es.adapter_rank is None or es.adapter_rank == "full" or (isinstance(es.adapter_rank, int)
                                                                  and es.adapter_rank >= 1),
         f"es.adapter_rank must be a positive integer, 'full' or null (in place), got {es.adapter_rank!r}"),
        (es.strategy in STRATEGIES or ":" in es.strategy,
         f"es.strategy must be one of {', '.join(STRATEGIES)} or package.module:Class, got {es.strategy!r}"),
        (es.scoring in SCORINGS, f"es.scoring must be one of {', '.join(SCORINGS)}, got {es.scoring!r}"),
        (es.samples_per_prompt >= 1, f"es.samples_per_prompt must be >= 1, got {es.samples_per_prompt}"),
        (es.samples_per_prompt == 1 or gen.temperature > 0,
         f"es.samples_per_prompt {es.samples_per_prompt} draws several completions per (member, prompt), which "
         "greedy decoding makes identical: set generation.temperature > 0 or es.samples_per_prompt: 1"),
        (es.aggregate in AGGREGATES, f"es.aggregate must be one of {', '.join(AGGREGATES)}, got {es.aggregate!r}"),
        (es.aggregate != "majority_vote" or es.answer_fn is not None or data.task is not None,
         "es.aggregate majority_vote compares extracted answers: set es.answer_fn (a task name or "
         "package.module:function) for your own dataset"),
        (es.sigma_schedule in SCHEDULES and es.lr_schedule in SCHEDULES,
         f"es.sigma_schedule and es.lr_schedule must be one of {', '.join(SCHEDULES)}, got {es.sigma_schedule!r} "
         f"and {es.lr_schedule!r}"),
        (es.warmup_steps >= 0, f"es.warmup_steps must be >= 0, got {es.warmup_steps}"),
        (gen.engine == "hf" or (es.strategy == "eggroll" and es.adapter_rank is not None),
         "generation.engine vllm runs members as LoRA adapters: it needs es.strategy eggroll and an adapter "
         "(es.adapter_rank); use generation.engine: hf"),
        (es.members_per_prompt >= 1 and es.population_size % es.members_per_prompt == 0,
         f"es.members_per_prompt {es.members_per_prompt} must divide es.population_size {es.population_size}"),
        (not es.antithetic or es.members_per_prompt % 2 == 0,
         "es.members_per_prompt must be even with antithetic sampling (both members of a pair answer the same "
         "prompts)"),
        (es.prompts_per_member >= 1, f"es.prompts_per_member must be >= 1, got {es.prompts_per_member}"),
        (es.lr > 0, f"es.lr must be > 0, got {es.lr}"),
        (0 <= es.momentum < 1, f"es.momentum must be in [0, 1), got {es.momentum}"),
        (es.weight_decay >= 0 and es.lr * es.weight_decay < 1,
         f"es.weight_decay must be >= 0 with es.lr * es.weight_decay < 1 (each step keeps 1 - lr * weight_decay of "
         f"the adapter), got weight_decay {es.weight_decay} at lr {es.lr}"),
        (not es.decay_to_base or es.weight_decay > 0,
         "es.decay_to_base sets where es.weight_decay pulls; give es.weight_decay > 0 (the pull per step)"),
        (es.fitness in FITNESS_METHODS, f"es.fitness must be one of {', '.join(FITNESS_METHODS)}, got {es.fitness!r}"),
        (es.sigma_scale in SIGMA_SCALES,
         f"es.sigma_scale must be {' or '.join(SIGMA_SCALES)}, got {es.sigma_scale!r}"),
        (es.optimizer in OPTIMIZERS, f"es.optimizer must be {' or '.join(OPTIMIZERS)}, got {es.optimizer!r}"),
        (es.optimizer == "sgd" or es.momentum == 0,
         "es.momentum is SGD's; es.optimizer adam keeps its own moments: set es.momentum: 0"),
        (es.sigma_scale == "absolute" or config.generation.engine == "hf",
         "es.sigma_scale weight_rms runs on the hf engine (the vllm engine writes member adapters at one σ)"),
        (config.model.dry_run_random_init or not config.model.dry_run_shrink,
         "model.dry_run_shrink shrinks a random-init model: set model.dry_run_random_init too (or use --dry_run tiny)"),
        (data.task in DATA_TASKS, f"data.task must be one of {', '.join(map(str, DATA_TASKS))} (null: your own "
                                  f"dataset at data.data_path), got {data.task!r}"),
        (data.task is not None or data.data_path is not None,
         "data.task is null, so the prompts come from your own dataset: set data.data_path to a local file or "
         "folder or a Hub dataset id"),
        (data.eval_limit >= 1, f"data.eval_limit must be >= 1, got {data.eval_limit}"),
        (data.few_shot >= 0, f"data.few_shot must be >= 0, got {data.few_shot}"),
        (data.long_prompts in ("error", "truncate"),
         f"data.long_prompts must be error or truncate, got {data.long_prompts!r}"),
        (config.method == "eggroll" or data.long_prompts == "error",
         "data.long_prompts: truncate is for EGGROLL runs; TRL's GRPOTrainer does not truncate prompts, so GRPO runs "
         "refuse prompts that do not fit: shorten them or lower generation.max_new_tokens"),
        (gen.engine in ("hf", "vllm"), f"generation.engine must be hf or vllm, got {gen.engine!r}"),
        (gen.max_new_tokens >= 1, "generation.max_new_tokens must be >= 1"),
        (gen.temperature >= 0, f"generation.temperature must be >= 0 (0 = greedy), got {gen.temperature}"),
        (0 < gen.top_p <= 1, f"generation.top_p must be in (0, 1] (1 = off), got {gen.top_p}"),
        (gen.max_batch_tokens >= 1, f"generation.max_batch_tokens must be >= 1, got {gen.max_batch_tokens}"),
        (bool(config.rewards), "rewards must name at least one reward function"),
        (weights is None or len(weights) == len(config.rewards),
         f"reward_weights has {len(weights or [])} entries for {len(config.rewards)} reward functions; give one "
         "weight per entry of rewards (or null for all 1)"),
        (all(r in REPORT_TO for r in report_to),
         f"report_to must be one or more of {', '.join(REPORT_TO)}, got {config.report_to!r}"),
        (0 < gen.gpu_memory_utilization <= 1,
         f"generation.gpu_memory_utilization must be in (0, 1], got {gen.gpu_memory_utilization}"),
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


DATA_TASKS = ("tiny-arith", "gsm8k", "countdown", None)


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
