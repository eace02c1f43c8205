"""The fitness levers of the LLM trainer, for every strategy: σ / lr schedules and several samples per prompt.

- `es.sigma_schedule`, `es.lr_schedule` (constant | linear | cosine) and `es.warmup_steps`: the value at step t is
  the recipe's σ or lr times `schedule_factor`. lr warms up linearly over the first `warmup_steps` steps, then
  decays to 0 at max_steps; σ decays to a tenth of es.sigma (exploration never stops). A pure function of the
  step, so a resumed run uses exactly the values an uninterrupted one would.
- `es.samples_per_prompt: K` with `es.aggregate`: each (member, prompt) draws K sampled completions, and one score
  stands for them: `mean`, `pass_at_k` (the best of K: rewards a member that *can* solve a problem) or
  `majority_vote` (the reward of the most common extracted answer: rewards a member whose samples agree on the right
  answer, as self-consistency decoding would use it).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from fractions import Fraction

import torch

SCHEDULES = ("constant", "linear", "cosine")
AGGREGATES = ("mean", "pass_at_k", "majority_vote")
SCORINGS = ("auto", "batched", "per_member")
SIGMA_FLOOR = 0.1  # σ schedules decay to this fraction of es.sigma


def schedule_factor(kind: str, step: int, total_steps: int, warmup_steps: int = 0, floor: float = 0.0) -> float:
    """Multiplier of the base value for the update of `step` (0-based) in a run of `total_steps` updates.

    Warm-up: (step + 1) / (warmup_steps + 1) for step < warmup_steps. Then, with p = (step − warmup) / (total −
    warmup) in [0, 1): constant 1; linear floor + (1 − floor)(1 − p); cosine floor + (1 − floor)(1 + cos πp) / 2.
    Never 0 inside the run, so every step moves.
    """
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    if step < warmup_steps:
        return (step + 1) / (warmup_steps + 1)
    if kind == "constant":
        return 1.0
    p = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    decay = 1.0 - p if kind == "linear" else 0.5 * (1.0 + math.cos(math.pi * p))
    return floor + (1.0 - floor) * decay


def _number_answer(text: str) -> str | None:
    from .rewards import extract_answer

    answer = extract_answer(text, "flexible")
    try:
        return str(Fraction(answer)) if answer is not None else None   # 18 and 18.00 are one answer
    except (ValueError, ZeroDivisionError):
        return answer


def _countdown_answer(text: str) -> str | None:
    from .countdown import extract_expression

    expression = extract_expression(text)
    return None if expression is None else "".join(expression.split())


ANSWER_EXTRACTORS: dict[str, Callable[[str], str | None]] = {
    "gsm8k": _number_answer, "tiny-arith": _number_answer, "countdown": _countdown_answer}


def answer_extractor(spec: str | Callable | None, task: str | None) -> Callable[[str], str | None]:
    """The majority-vote extractor: a callable, a built-in task name, `package.module:function`, or (None) the
    extractor of `task`."""
    from .importing import import_object

    spec = task if spec is None else spec
    if callable(spec):
        return spec
    if spec in ANSWER_EXTRACTORS:
        return ANSWER_EXTRACTORS[spec]
    if isinstance(spec, str) and ":" in spec:
        fn = import_object(spec, "es.answer_fn")
        if callable(fn):
            return fn
    raise ValueError(f"es.answer_fn must be one of {', '.join(ANSWER_EXTRACTORS)} or package.module:function "
                     f"(completion text -> answer or None), got {spec!r}")


def aggregate_samples(scores: torch.Tensor, samples: int, kind: str,
                      answers: Sequence[str | None] | None = None) -> torch.Tensor:
    """Scores [R·K] (the K samples of each row consecutive) → one score per row [R].

    majority_vote: the score of the first sample whose extracted answer is the most common one among the row's
    samples that have an answer (ties: the answer seen first); a row with no extracted answer keeps its mean.
    """
    if kind not in AGGREGATES:
        raise ValueError(f"aggregate must be one of {', '.join(AGGREGATES)}, got {kind!r}")
    grid = scores.view(-1, samples)                                              # [R, K]
    if kind == "mean":
        return grid.mean(dim=1)
    if kind == "pass_at_k":
        return grid.max(dim=1).values
    if answers is None or len(answers) != scores.numel():
        raise ValueError("majority_vote needs one extracted answer (or None) per sample")
    out = grid.mean(dim=1).clone()
    for row in range(grid.shape[0]):
        chunk = answers[row * samples:(row + 1) * samples]
        counts = Counter(a for a in chunk if a is not None)
        if counts:
            top = max(counts.values())
            winner = next(a for a in chunk if a is not None and counts[a] == top)
            out[row] = grid[row, chunk.index(winner)]
    return out
