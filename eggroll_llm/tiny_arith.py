"""tiny-arith: seeded GSM8K-style multi-step arithmetic word problems.

The task of the embedded CPU default (docs/design.md §4). Each problem is a short story whose quantity goes
through 1-2 operations (the knobs allow more); the gold answer shows the worked steps and ends with GSM8K's
`#### N` line, so the same reward code scores tiny-arith and GSM8K.

Splits are fixed and disjoint by construction: a problem belongs to the split its question hashes to
(80/10/10), and a split's generator rejects everything that hashes elsewhere. The same (split, n, seed,
knobs) always gives the same rows.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

SPLITS = ("train", "validation", "test")
_SPLIT_BUCKETS = {"train": range(0, 80), "validation": range(80, 90), "test": range(90, 100)}

NAMES = ["Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Jo", "Kim", "Leo", "Mia", "Ned",
         "Ola", "Pia", "Raj", "Sam", "Tia", "Uma", "Vic", "Wes", "Yan", "Zoe"]
ITEMS = ["apples", "books", "coins", "cards", "eggs", "pens", "shells", "stamps", "marbles", "cookies",
         "stickers", "beads", "rocks", "plums", "cups"]


@dataclass(frozen=True)
class Difficulty:
    """Knobs of the generator. The defaults are the embedded task's."""

    min_steps: int = 1
    max_steps: int = 2
    max_start: int = 30     # the starting quantity is drawn from [2, max_start]
    max_operand: int = 20   # added / removed amounts are drawn from [1, max_operand]
    max_factor: int = 4     # multiply / divide by a factor in [2, max_factor]

    def __post_init__(self) -> None:
        if not 1 <= self.min_steps <= self.max_steps:
            raise ValueError(f"tiny-arith needs 1 <= min_steps <= max_steps, got {self.min_steps}, {self.max_steps}")
        if self.max_start < 2 or self.max_operand < 1 or self.max_factor < 2:
            raise ValueError("tiny-arith needs max_start >= 2, max_operand >= 1, max_factor >= 2")


def _add(rng, name, item, value, d):
    b = rng.randint(1, d.max_operand)
    text = rng.choice([f"{name} finds {b} more {item}.", f"A friend gives {name} {b} more {item}.",
                       f"{name} buys {b} more {item}."])
    return text, f"{value}+{b}={value + b}", value + b


def _sub(rng, name, item, value, d):
    if value < 2:
        return None
    b = rng.randint(1, min(d.max_operand, value - 1))
    text = rng.choice([f"{name} gives away {b} {item}.", f"{name} loses {b} {item}.",
                       f"{name} uses {b} of the {item}."])
    return text, f"{value}-{b}={value - b}", value - b


def _mul(rng, name, item, value, d):
    k = rng.randint(2, d.max_factor)
    word = {2: "doubles", 3: "triples"}.get(k)
    text = f"{name} {word} the {item}." if word else f"{name} ends up with {k} times as many {item}."
    return text, f"{value}*{k}={value * k}", value * k


def _div(rng, name, item, value, d):
    factors = [k for k in range(2, d.max_factor + 1) if value % k == 0]
    if not factors:
        return None
    k = rng.choice(factors)
    text = rng.choice([f"{name} splits the {item} into {k} equal piles and keeps one pile.",
                       f"{name} shares the {item} equally with {k - 1} friends and keeps one share."])
    return text, f"{value}/{k}={value // k}", value // k


_OPS = (_add, _sub, _mul, _div)


def generate_problem(rng: random.Random, difficulty: Difficulty = Difficulty()) -> dict[str, str]:
    """One problem: {'question': ..., 'answer': worked steps + '#### N'}."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, difficulty.max_start)
    sentences, steps = [f"{name} has {value} {item}."], []
    for _ in range(rng.randint(difficulty.min_steps, difficulty.max_steps)):
        while (step := rng.choice(_OPS)(rng, name, item, value, difficulty)) is None:
            pass
        text, work, value = step
        sentences.append(text)
        steps.append(work)
    sentences.append(f"How many {item} does {name} have now?")
    return {"question": " ".join(sentences), "answer": "\n".join(steps) + f"\n#### {value}"}


# How the embedded base model was trained (scripts/train_tiny_model.py's defaults): its pretraining distribution.
SHIPPED_MODEL = {"seed": 0, "train_examples": 20000, "direct_fraction": 0.6}


def sft_answer(row: dict[str, str], direct: bool) -> str:
    """The base model's training target: the worked steps and '#### N', or, when `direct`, a careless answer without
    working.

    The careless answer stops after the first operation ('#### ' + the first step's result): right on 1-step
    problems, wrong on longer ones. This gives the base model the weakness RL fixes in real LLMs, answering
    without showing the work, as one low-dimensional choice (the first answer token) that a reward can reveal.
    """
    return "#### " + row["answer"].split("\n", 1)[0].rsplit("=", 1)[1] if direct else row["answer"]


def pretraining_held_out(n: int, seed: int = 1) -> list[dict[str, str]]:
    """`n` rows {question, answer} of the embedded model's pretraining distribution that it never trained on: train
    split problems drawn with another seed, minus the shipped model's training questions, each answered in the style
    its training mixed in (`sft_answer`, careless with probability SHIPPED_MODEL["direct_fraction"]). Deterministic
    in (n, seed)."""
    if seed == SHIPPED_MODEL["seed"]:
        raise ValueError(f"seed {seed} draws the shipped model's own training problems; pick another seed")
    trained = {row["question"] for row in make_split("train", SHIPPED_MODEL["train_examples"], SHIPPED_MODEL["seed"])}
    rng = random.Random(f"direct/held-out/{seed}")
    rows = [row for row in make_split("train", n + len(trained) // 10, seed) if row["question"] not in trained][:n]
    if len(rows) < n:
        raise ValueError(f"only {len(rows)} held-out tiny-arith problems found; ask for fewer")
    return [{"question": row["question"], "answer": sft_answer(row, rng.random() < SHIPPED_MODEL["direct_fraction"])}
            for row in rows]


def split_of(question: str) -> str:
    """The split a question belongs to, from a stable hash of its text."""
    bucket = int.from_bytes(hashlib.blake2b(question.encode(), digest_size=8).digest(), "big") % 100
    return next(s for s, r in _SPLIT_BUCKETS.items() if bucket in r)


def make_split(split: str, n: int, seed: int = 0, difficulty: Difficulty = Difficulty()) -> list[dict[str, str]]:
    """`n` distinct problems of `split`, deterministic in (split, n, seed, difficulty)."""
    return sample_split("tiny-arith", split, n, random.Random(f"tiny-arith/{split}/{seed}"),
                        lambda rng: generate_problem(rng, difficulty),
                        key=lambda row: row["question"], split_of_row=lambda row: split_of(row["question"]))


def sample_split(task: str, split: str, n: int, rng: random.Random, draw, key, split_of_row) -> list[dict]:
    """`n` rows `draw(rng)` whose `key` is new and whose `split_of_row` is `split`, in drawing order: a generated
    task's disjoint splits (tiny-arith; countdown.py draws its problems the same way)."""
    if split not in SPLITS:
        raise ValueError(f"unknown {task} split {split!r}; choose one of {', '.join(SPLITS)}")
    if n < 1:
        raise ValueError(f"{task} needs n >= 1 problems, got {n}")
    rows, seen, tries = [], set(), 0
    while len(rows) < n:
        tries += 1
        if tries > 200 * n + 10_000:
            raise ValueError(f"{task} could only find {len(rows)} distinct {split} problems of this difficulty; "
                             "ask for fewer or widen the difficulty knobs")
        row = draw(rng)
        if key(row) in seen or split_of_row(row) != split:
            continue
        seen.add(key(row))
        rows.append(row)
    return rows
