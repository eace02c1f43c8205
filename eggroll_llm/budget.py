"""Budget axes of a comparison — wall-clock, completions, generated tokens, estimated FLOPs — read from metrics.jsonl.

The first three are counted by the trainers (runlog.RunTotals). FLOPs are estimated here from the token counts and
the parameter counts the trainers log, with the formula of `training_flops` (derived in docs/compare.md).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Axis:
    key: str          # the cumulative quantity of a metrics record (flops is computed, the others are logged)
    name: str         # for tables and plot titles
    unit: str         # "s", or "" for counts
    file_suffix: str  # accuracy_vs_<file_suffix>.png


AXES = (Axis("wall_s", "wall-clock", "s", "wall"), Axis("completions", "completions", "", "completions"),
        Axis("tokens", "generated tokens", "", "tokens"), Axis("flops", "estimated FLOPs", "", "flops"))


def training_flops(method: str, *, params: int, trainable: int, prompt_tokens: int, completion_tokens: int,
                   beta: float = 0.0, gradient_checkpointing: bool = False) -> float:
    """Estimated floating-point operations to process `prompt_tokens` + `completion_tokens` in training.

    A forward pass costs ~2·params per token processed (one multiply-add per weight; attention over the context is
    left out, as in Kaplan et al. 2020 §2.1, which is fair at these sequence lengths). Evaluation is excluded, as
    wall_s excludes it. The counts are cumulative, so the estimate at any step is this formula on its totals.

    - EGGROLL: generation only, 2·params per prompt and completion token of every member row. The low-rank noise
      and the adapter add 2·r·(m + n) per targeted m×n matrix and token, left out (small while r ≪ min(m, n)).
    - GRPO: the same generation, then TRL's update on every completion with its prompt: a forward (2·params per
      token), the backward's activation gradients (2·params) and its weight gradients for the trainable parameters
      only (2·trainable; LoRA's frozen weights need none), so 4·params + 2·trainable per trained token, 6·params for
      full fine-tuning. Gradient checkpointing recomputes the forward (+2·params); beta > 0 adds the reference
      model's log-probs (+2·params). TRL's old-policy log-probs are not counted: TRL computes them only when an
      update reuses completions generated before it (num_iterations > 1, or steps_per_generation not dividing
      gradient_accumulation_steps), which the project's GRPO trainer never sets up.
    """
    if method not in ("eggroll", "grpo"):
        raise ValueError(f"no FLOPs formula for method {method!r}; expected eggroll or grpo")
    tokens = prompt_tokens + completion_tokens
    generation = 2 * params * tokens
    if method == "eggroll":
        return float(generation)
    per_trained_token = 4 * params + 2 * trainable
    per_trained_token += 2 * params * (int(gradient_checkpointing) + int(beta > 0))
    return float(generation + per_trained_token * tokens)


def flops_curve(config: dict, records: list[dict]) -> tuple[list[float] | None, str | None]:
    """Cumulative estimated FLOPs at each record, or (None, why not) when the run lacks the counts it needs.

    Needs model_params and trainable_params on the first record and prompt_tokens on every record; runs recorded
    without them get no FLOPs axis (the other axes still apply).
    """
    first = records[0]
    missing = [k for k in ("model_params", "trainable_params") if k not in first]
    if any("prompt_tokens" not in r for r in records):
        missing.append("prompt_tokens")
    if missing:
        return None, f"metrics.jsonl has no {', '.join(missing)}"
    grpo = config.get("grpo") or {}
    return [training_flops(config.get("method"), params=first["model_params"], trainable=first["trainable_params"],
                           prompt_tokens=r["prompt_tokens"], completion_tokens=r["tokens"],
                           beta=grpo.get("beta", 0.0), gradient_checkpointing=grpo.get("gradient_checkpointing", False))
            for r in records], None
