"""The embedded tiny-countdown model's training answers, and held-out text of its pretraining distribution.

scripts/train_tiny_countdown.py trains the model on these answers (docs/results.md, "The embedded Countdown model");
`eggroll-llm drift` reads `pretraining_held_out` as the model's default off-task text (eggroll_llm/off_task.py):
Countdown problems of the validation split, which training never sees, other than those evaluations read, each
prompted as the trainers prompt and answered in the style the model's training mixed in (careful or careless).

A training answer is a short worked search, then the expression in <answer> tags:
    <think>91 90 82 6. 91>75 -90=1, 1<75 +82=83, 83>75 -6=77</think>
    <answer>91-90+82-6</answer>
"""

from __future__ import annotations

import random

from . import countdown

CARELESS_STEPS = 2  # a careless answer stops after this many operations
CARELESS_FRACTION = 0.6  # the share of careless answers eggroll_llm/assets/tiny-countdown was trained on


def worked_search(nums: list[int], target: int, careless: bool = False) -> str:
    """The training answer: the greedy search written out in <think>, then its expression in <answer>.

    The numbers sorted in decreasing order first; then from the largest, '-' the next one while the running value is
    above the target, '+' while below, each step written as 'value>target -next=new'; stop when it equals the target.
    `careless` stops after CARELESS_STEPS operations."""
    order = sorted(nums, reverse=True)
    value, steps, used = order[0], [], [str(order[0])]
    for number in order[1:]:
        if value == target or (careless and len(steps) == CARELESS_STEPS):
            break
        op, sign = ("-", ">") if value > target else ("+", "<")
        new = value - number if op == "-" else value + number
        steps.append(f"{value}{sign}{target} {op}{number}={new}")
        used += [op, str(number)]
        value = new
    search = ", ".join(steps) or f"{value}={target}"
    return f"<think>{' '.join(map(str, order))}. {search}</think>\n<answer>{''.join(used)}</answer>"


def careless_flags(n: int, fraction: float, seed: int) -> list[bool]:
    """Which of `n` rows get the careless answer: a seeded draw, independent of the problems."""
    rng = random.Random(f"careless/{seed}")
    return [rng.random() < fraction for _ in range(n)]


EVALUATED = 500  # evaluations read the first eval_limit problems of a split at seed 0; the recipes read ≤ 500


def pretraining_held_out(n: int, seed: int = 1) -> list[dict]:
    """`n` rows {nums, target, solution, answer} of the model's pretraining distribution that it never trained on:
    validation problems drawn with another seed than evaluation's, minus the first EVALUATED problems evaluation
    reads, a CARELESS_FRACTION of them answered careless. Deterministic in (n, seed)."""
    if seed == 0:
        raise ValueError("seed 0 draws the problems evaluations read; pick another seed")
    evaluated = {countdown.problem_key(row) for row in countdown.make_split("validation", EVALUATED, seed=0)}
    rows = [row for row in countdown.make_split("validation", n + n // 4 + 10, seed=seed)
            if countdown.problem_key(row) not in evaluated][:n]
    if len(rows) < n:
        raise ValueError(f"only {len(rows)} held-out Countdown problems found; ask for fewer")
    flags = careless_flags(n, CARELESS_FRACTION, seed + 1)
    return [{**row, "answer": worked_search(row["nums"], row["target"], careless)}
            for row, careless in zip(rows, flags)]
