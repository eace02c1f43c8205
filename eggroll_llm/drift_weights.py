"""What a run changed: ΔW = final − base for every parameter it moved, and the geometry of that change.

Every method's run directory reads the same way (`run_delta`):
- an EGGROLL adapter run: ΔW = U Vᵀ (or the dense delta) of each adapted layer, from the latest checkpoint, exact;
- an in-place run (full-parameter ES, es.adapter_rank null): the latest checkpoint's weights minus the base's;
- a GRPO LoRA run: ΔW = scaling · lora_B lora_A of RUN/adapter/ (PEFT's scaling, as PEFT merges it);
- a GRPO full fine-tuning run: RUN/model/ minus the base.

The figures (docs/compare.md, "Drift"): ‖ΔW‖_F, ‖ΔW‖_F / ‖W‖_F, the fraction of entries that moved, and for 2-D
weights the effective rank (singular values holding 90% of ΔW's energy), after Abdi et al. 2026 (arXiv 2601.20861)
and Hoy et al. 2026 (arXiv 2604.01499), who compare the norm, sparsity and direction of ES and GRPO updates.

    from eggroll_llm.drift_weights import run_delta, delta_stats
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

RANK_ENERGY = 0.9  # effective rank: the fewest singular values whose squares hold this share of ‖ΔW‖_F²


class DriftError(ValueError):
    """Runs `drift` cannot read or compare; the message names the problem and the fix."""


@dataclass
class RunDelta:
    """One run's change to its base model: `final` holds the trained values of the parameters it changed, `delta`
    their ΔW = final − base (fp32), both keyed by parameter name (`lm_head.weight`)."""

    path: Path
    config: object                       # config.EggrollConfig of the run
    delta: dict[str, Tensor]
    final: dict[str, Tensor]
    step: int | None = None              # the training step these weights are from
    records: list[dict] = field(default_factory=list, repr=False)

    @property
    def method(self) -> str:
        """eggroll, openai_es, … (the ES strategy) with `-inplace` for in-place runs; grpo-lora or grpo-full."""
        c = self.config
        if c.method == "grpo":
            return "grpo-lora" if c.grpo.lora_rank else "grpo-full"
        strategy = c.es.strategy if isinstance(c.es.strategy, str) else "custom"
        return strategy.rpartition(":")[2].lower() + ("-inplace" if c.es.adapter_rank is None else "")


def effective_rank(delta: Tensor, energy: float = RANK_ENERGY) -> int:
    """The fewest singular values of a 2-D `delta` whose squares hold `energy` of its squared Frobenius norm; 0 for a
    zero matrix."""
    s2 = torch.linalg.svdvals(delta.double()).pow(2)
    total = float(s2.sum())
    if total == 0.0:
        return 0
    return int((torch.cumsum(s2, 0) / total < energy - 1e-12).sum()) + 1


def module_stats(delta: Tensor, weight: Tensor) -> dict:
    """‖ΔW‖_F, ‖ΔW‖_F / ‖W‖_F, moved fraction (entries with ΔW ≠ 0) and effective rank (None for non-2-D)."""
    norm, base = float(delta.double().norm()), float(weight.double().norm())
    return {"delta_norm": norm, "relative_delta_norm": norm / base if base > 0 else None,
            "moved_fraction": float((delta != 0).double().mean()),
            "effective_rank": effective_rank(delta) if delta.dim() == 2 else None}


def delta_stats(delta: dict[str, Tensor], base: nn.Module) -> dict:
    """Per-parameter `module_stats` under "modules", and the totals: norms over all changed parameters together,
    moved fraction over every parameter of the model, effective rank the median over the 2-D ones (None if none)."""
    modules = {name: module_stats(d, base.get_parameter(name).detach()) for name, d in delta.items()}
    squared = sum(m["delta_norm"] ** 2 for m in modules.values())
    weight_sq = sum(float(base.get_parameter(n).detach().double().pow(2).sum()) for n in delta)
    moved = sum(int((d != 0).sum()) for d in delta.values())
    total_entries = sum(p.numel() for p in base.parameters())
    ranks = [m["effective_rank"] for m in modules.values() if m["effective_rank"] is not None]
    return {"delta_norm": math.sqrt(squared),
            "relative_delta_norm": math.sqrt(squared / weight_sq) if weight_sq else None,
            "moved_fraction": moved / total_entries,
            "effective_rank": statistics.median(ranks) if ranks else None, "modules": modules}


def shared_names(base: nn.Module) -> dict[str, str]:
    """Every other name of a parameter shared between modules (a tied output head: `lm_head.weight`) -> the name
    named_parameters gives it (`model.embed_tokens.weight`): one matrix of the base, whichever name a run moved."""
    first: dict[int, str] = {}
    aliases = {}
    for name, p in base.named_parameters(remove_duplicate=False):
        if id(p) in first:
            aliases[name] = first[id(p)]
        else:
            first[id(p)] = name
    return aliases


def cosine(a: dict[str, Tensor], b: dict[str, Tensor], aliases: dict[str, str] | None = None) -> dict:
    """Cosine of two runs' ΔW over every parameter either changed (one left alone counts as 0 there): "cosine"
    overall and per parameter under "modules" (None where one of them is zero). `aliases` (shared_names) compares a
    tied head's change with a change to the matrix it shares, unless the run changed that matrix itself too."""
    def canonical(delta: dict[str, Tensor]) -> dict[str, Tensor]:
        return {(aliases or {}).get(n, n) if (aliases or {}).get(n) not in delta else n: d for n, d in delta.items()}

    a, b = canonical(a), canonical(b)

    def cos(dot: float, na: float, nb: float) -> float | None:
        return dot / math.sqrt(na * nb) if na > 0 and nb > 0 else None

    modules, dot, sa, sb = {}, 0.0, 0.0, 0.0
    for name in sorted(set(a) | set(b)):
        x, y = a.get(name), b.get(name)
        nx = float(x.double().pow(2).sum()) if x is not None else 0.0
        ny = float(y.double().pow(2).sum()) if y is not None else 0.0
        d = float((x.double() * y.double()).sum()) if x is not None and y is not None else 0.0
        modules[name] = cos(d, nx, ny)
        dot, sa, sb = dot + d, sa + nx, sb + ny
    return {"cosine": cos(dot, sa, sb), "modules": modules}


def _changed(final: nn.Module, base: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(delta, final) of the parameters of `final` that differ from `base`'s of the same name."""
    delta, values = {}, {}
    for name, p in final.named_parameters():
        w = base.get_parameter(name).detach()
        if p.shape != w.shape:
            raise DriftError(f"{name} is {tuple(p.shape)} in the run but {tuple(w.shape)} in its base model: the run "
                             "was trained from another model; pass runs of the base named in their config.yaml")
        d = p.detach().float() - w.float()
        if bool((d != 0).any()):
            delta[name], values[name] = d, p.detach().float().clone()
    return delta, values


def _peft_deltas(folder: Path, base: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """ΔW = scaling · lora_B lora_A of every module of a PEFT LoRA folder, scaling as PEFT applies it."""
    from safetensors.torch import load_file

    from .export import _check_lora_config, _lora_pairs

    config = json.loads((folder / "adapter_config.json").read_text())
    _check_lora_config(config, str(folder))
    delta, values = {}, {}
    for module, (lora_A, lora_B) in _lora_pairs(load_file(str(folder / "adapter_model.safetensors")),
                                                 str(folder)).items():
        r = lora_A.shape[0]
        scaling = config["lora_alpha"] / (r ** 0.5 if config.get("use_rslora") else r)
        name = f"{module}.weight"
        delta[name] = scaling * (lora_B @ lora_A)                                  # [m, r] @ [r, n]
        values[name] = base.get_parameter(name).detach().float() + delta[name]
    return delta, values


def run_delta(run_dir: str | Path, base: nn.Module) -> RunDelta:
    """A run's ΔW against `base` (its base model, loaded once by the caller), from whatever the run produced."""
    from .checkpoint import list_checkpoints
    from .config import load_config
    from .export import load_run
    from .rundir import recorded_dry_run
    from .runlog import MetricsLog

    path = Path(run_dir)
    if not (path / "config.yaml").is_file():
        raise DriftError(f"{path} is not a run directory (no config.yaml); pass folders written by "
                         "`eggroll-llm train`")
    config = load_config(path / "config.yaml")
    if recorded_dry_run(path) is not None:
        raise DriftError(f"{path} trained a random-init model (a dry run): it has no base model to compare with")
    records = MetricsLog(path / "metrics.jsonl").read() if (path / "metrics.jsonl").is_file() else []
    if config.method == "eggroll":
        if not list_checkpoints(path):
            raise DriftError(f"{path} has no checkpoint (checkpoints/step-*/): train it until it saves one")
        _, model, layers, state = load_run(path)
        if layers:  # adapter: ΔW is the adapter itself, exactly
            delta = {f"{name}.weight": layer.delta_weight().detach().float().clone() for name, layer in layers.items()}
            values = {n: base.get_parameter(n).detach().float() + d for n, d in delta.items()}
        else:
            delta, values = _changed(model, base)
        return RunDelta(path, config, delta, values, state["step"], records)
    from .models import load_model

    if (path / "adapter" / "adapter_config.json").is_file():
        delta, values = _peft_deltas(path / "adapter", base)
    elif (path / "model" / "config.json").is_file():
        delta, values = _changed(load_model(str(path / "model"), dtype=config.model.dtype), base)
    else:
        raise DriftError(f"{path} has neither adapter/ nor model/ (written when a GRPO run finishes); let it finish "
                         "or resume it")
    return RunDelta(path, config, delta, values, max((r["step"] for r in records), default=None), records)
