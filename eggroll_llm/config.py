"""Recipe configuration: typed dataclasses, one help string per field, loaded from YAML with CLI overrides.

Every recipe key maps 1:1 to a field here; defaults live only here (STYLE.md). An unknown key is an error that
names the nearest valid key, and a value of the wrong type is an error that names the field.

    eggroll-llm train recipes/tiny-arith-eggroll.yaml --es.sigma 0.01 --max_steps 50
"""

from __future__ import annotations

import dataclasses
import difflib
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
    task: str = _help("tiny-arith or gsm8k", "tiny-arith")
    data_path: str | None = _help("local jsonl/parquet file or folder; default: the Hub dataset (gsm8k)", None)
    train_split: str = _help("split the training prompts come from", "train")
    eval_split: str = _help("held-out split for periodic evaluation", "validation")
    eval_limit: int = _help("held-out examples per evaluation", 200)
    few_shot: int = _help("worked train examples shown before each question", 0)


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
    population_size: int = _help("members per step (N); even when antithetic", 32)
    sigma: float = _help("perturbation scale σ (paper: 1e-3..2e-3 on real LLMs; larger on tiny models)", 0.02)
    rank: int = _help("rank r of each member's perturbation A Bᵀ (paper: 1)", 1)
    antithetic: bool = _help("members 2k, 2k+1 share noise with opposite signs", True)
    noise_reuse: int = _help("steps that share one noise draw (1 = fresh noise every step)", 1)
    lr: float = _help("learning rate α of the ES step (1/σ is divided out, so α does not scale with σ or N)", 0.01)
    momentum: float = _help("SGD momentum (0 = plain SGD, the paper's choice)", 0.0)
    weight_decay: float = _help("decoupled decay of the adapter per step", 0.0)
    fitness: str = _help("group_centered (paper §6.3) or centered_rank", "group_centered")
    adapter_rank: int | str = _help("rank R of the fp32 adapter the updates fold into, or 'full' (dense delta)", 8)
    target_modules: list[str] | str | None = _help("PEFT-style names or a regex; default: every linear layer in the "
                                                   "transformer blocks", None)
    members_per_prompt: int = _help("members answering the same prompts (a fitness group); divides population_size", 32)
    prompts_per_member: int = _help("prompts each member answers per step", 8)


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
class TrainConfig:
    method: str = _help("eggroll (this toolkit) or grpo (TRL baseline)", "eggroll")
    output_dir: str = _help("run directory: config.yaml, metrics.jsonl, checkpoints/, adapter/", "runs/default")
    seed: int = _help("fixes data order, noise and sampling: the same seed gives the same metrics", 0)
    max_steps: int = _help("stop after this many updates", 100)
    max_wall_s: float | None = _help("stop after this many seconds of training (evaluation excluded)", None)
    eval_every: int = _help("evaluate on the held-out split every K steps (and at the start and end)", 10)
    save_every: int = _help("write a resumable checkpoint every K steps (and at the end)", 10)
    distributed_timeout_s: float = _help("multi-process runs (eggroll): seconds a process waits for the others at "
                                         "a collective before the job fails with an error instead of hanging",
                                         1800.0)
    rewards: list[str] = _help("reward functions, summed: gsm8k, gsm8k_strict, format", factory=lambda: ["gsm8k"])
    model: ModelConfig = _help("the base model", factory=ModelConfig)
    data: DataConfig = _help("prompts and held-out data", factory=DataConfig)
    generation: GenerationConfig = _help("how completions are sampled", factory=GenerationConfig)
    es: ESConfig = _help("EGGROLL hyper-parameters", factory=ESConfig)
    grpo: GRPOSection = _help("GRPO baseline hyper-parameters (TRL's GRPOTrainer; used when method: grpo)",
                              factory=GRPOSection)


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
        if typing.get_origin(option) is list and isinstance(value, list) and all(isinstance(v, str) for v in value):
            return list(value)
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
            close = difflib.get_close_matches(key, list(fields), n=1, cutoff=0.5) or sorted(
                (f for f in fields if key.startswith(f) or f.startswith(key)), key=len, reverse=True)[:1]
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


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> TrainConfig:
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
    config = _build(TrainConfig, _merge(values, extra))
    validate(config)
    return config


def validate(config: TrainConfig) -> None:
    """Cross-field checks, raised before any work starts."""
    es = config.es
    checks = [
        (config.method in ("eggroll", "grpo"), f"method must be eggroll or grpo, got {config.method!r}"),
        (config.max_steps >= 1, f"max_steps must be >= 1, got {config.max_steps}"),
        (config.max_wall_s is None or config.max_wall_s > 0, "max_wall_s must be > 0 (or null for no limit)"),
        (config.eval_every >= 1 and config.save_every >= 1, "eval_every and save_every must be >= 1"),
        (config.distributed_timeout_s > 0, f"distributed_timeout_s must be > 0, got {config.distributed_timeout_s}"),
        (es.sigma > 0, f"es.sigma must be > 0, got {es.sigma}"),
        (es.rank >= 1, f"es.rank must be >= 1, got {es.rank}"),
        (es.population_size >= 1, f"es.population_size must be >= 1, got {es.population_size}"),
        (not es.antithetic or es.population_size % 2 == 0,
         f"es.population_size {es.population_size} is odd; antithetic sampling pairs members: use an even "
         "population_size or es.antithetic: false"),
        (es.noise_reuse >= 1, f"es.noise_reuse must be >= 1, got {es.noise_reuse}"),
        (es.adapter_rank == "full" or (isinstance(es.adapter_rank, int) and es.adapter_rank >= 1),
         f"es.adapter_rank must be a positive integer or 'full', got {es.adapter_rank!r}"),
        (es.members_per_prompt >= 1 and es.population_size % es.members_per_prompt == 0,
         f"es.members_per_prompt {es.members_per_prompt} must divide es.population_size {es.population_size}"),
        (not es.antithetic or es.members_per_prompt % 2 == 0,
         "es.members_per_prompt must be even with antithetic sampling (both members of a pair answer the same "
         "prompts)"),
        (es.prompts_per_member >= 1, f"es.prompts_per_member must be >= 1, got {es.prompts_per_member}"),
        (0 <= es.momentum < 1, f"es.momentum must be in [0, 1), got {es.momentum}"),
        (config.model.dry_run_random_init or not config.model.dry_run_shrink,
         "model.dry_run_shrink shrinks a random-init model: set model.dry_run_random_init too (or use --dry_run tiny)"),
        (config.data.eval_limit >= 1, f"data.eval_limit must be >= 1, got {config.data.eval_limit}"),
        (config.generation.max_new_tokens >= 1, "generation.max_new_tokens must be >= 1"),
        (bool(config.rewards), "rewards must name at least one reward function"),
        (0 < config.generation.gpu_memory_utilization <= 1,
         f"generation.gpu_memory_utilization must be in (0, 1], got {config.generation.gpu_memory_utilization}"),
        (config.method == "eggroll" or config.generation.engine == "hf",
         f"generation.engine {config.generation.engine!r} is for eggroll runs; GRPO samples with TRL's GRPOTrainer "
         "and evaluates with the hf engine: use generation.engine: hf"),
        (config.generation.engine != "vllm" or not config.model.dry_run_random_init,
         "generation.engine: vllm loads the base weights from model.name, so it cannot run a random-init model "
         "(model.dry_run_random_init); use generation.engine: hf"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def to_dict(config) -> dict:
    return dataclasses.asdict(config)


def describe(cls=TrainConfig, prefix: str = "") -> list[tuple[str, str, object]]:
    """(key, help, default) for every field, nested keys dotted: the reference table of recipe keys."""
    rows = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            rows += describe(type(default), f"{prefix}{f.name}.")
        else:
            rows.append((f"{prefix}{f.name}", f.metadata.get("help", ""), default))
    return rows
