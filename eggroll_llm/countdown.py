"""Countdown: reach a target number by combining given numbers with + - * /, graded by a safe exact parser.

The task of TinyZero (github.com/Jiayi-Pan/TinyZero) and the headline benchmark of "Evolution Strategies at Scale:
LLM Fine-Tuning Beyond Reinforcement Learning" (arXiv 2509.24372). A row is `{"nums": [44, 19, 35], "target": 98}`,
the columns of the public `Jiayi-Pan/Countdown-Tasks-3to4` set; the model answers with an arithmetic expression in
the last `<answer> ... </answer>` block of its completion.

Grading rule: the expression may use each given number at most once (as a multiset: a number given twice may be
used twice), may leave numbers out, and must equal the target exactly. This is the rule the task states to the
model ("each number can only be used once"). The reference graders are stricter: TinyZero's
`verl/utils/reward_score/countdown.py` and the ES-at-scale paper's grader also require every number to be used, so
scores here are an upper bound of theirs on the same completions.
Departures, each from parsing instead of `eval`: `**` and `//` are refused (Python's eval accepts them), `×`, `÷`
and the unicode minus are read as * / -, and values are exact rationals (7 / 2 * 2 == 7), not floats.

The expression is tokenized and parsed by recursive descent here, never passed to eval/exec, and bounded
(MAX_EXPRESSION_CHARS, MAX_DEPTH) so a hostile completion cannot exhaust the stack or the CPU.

Generated problems are solvable by construction: numbers are drawn, combined pairwise in random order with random
operations (positive intermediate values, exact division) until one value is left, and that value is the target;
the combination is kept as the row's witness `solution`. Splits are disjoint by construction, as in tiny_arith.py:
a problem belongs to the split its (sorted numbers, target) key hashes to.

    from eggroll_llm.countdown import make_split, countdown_prompt
    rows = make_split("train", 1000, seed=0)   # [{"nums": [...], "target": ..., "solution": "..."}, ...]
"""

from __future__ import annotations

import operator
import random
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, NamedTuple

from . import tiny_arith
from .completions import RewardError, completion_text

SPLITS = tiny_arith.SPLITS
MAX_EXPRESSION_CHARS = 300  # a 4-number answer needs ~25; longer is junk, and the bound caps parse work
MAX_DEPTH = 50              # nested parentheses / unary minus; keeps recursion far below Python's limit

_OPEN, _CLOSE = "<answer>", "</answer>"
_SYMBOLS = {"+": "+", "-": "-", "\u2212": "-", "*": "*", "\u00d7": "*", "/": "/", "\u00f7": "/", "(": "(", ")": ")"}
_TOKEN = re.compile(r"\s*(?:([0-9]+)|(\S))")  # ASCII digits only: int() would also read other scripts' digits


@dataclass(frozen=True)
class Difficulty:
    """Knobs of the generator. The defaults give problems shaped like Countdown-Tasks-3to4."""

    min_nums: int = 3
    max_nums: int = 4
    max_number: int = 100  # each number is drawn from [1, max_number]
    max_target: int = 100  # a combination is kept only if its value lies in [1, max_target]

    def __post_init__(self) -> None:
        if not 2 <= self.min_nums <= self.max_nums:
            raise ValueError(f"countdown needs 2 <= min_nums <= max_nums, got {self.min_nums}, {self.max_nums}")
        if self.max_number < 1 or self.max_target < 1:
            raise ValueError(f"countdown needs max_number >= 1 and max_target >= 1, got {self.max_number}, "
                             f"{self.max_target}")


def generate_problem(rng: random.Random, difficulty: Difficulty = Difficulty()) -> dict[str, Any]:
    """One solvable problem: {'nums': [...], 'target': int, 'solution': an expression using every number once}."""
    count = rng.randint(difficulty.min_nums, difficulty.max_nums)  # drawn once: retries must not favour short rows
    while True:
        nums = [rng.randint(1, difficulty.max_number) for _ in range(count)]
        pool = [(n, str(n)) for n in nums]  # (value, expression) of each partial combination
        while len(pool) > 1:
            (a, x), (b, y) = sorted([pool.pop(rng.randrange(len(pool))), pool.pop(rng.randrange(len(pool)))],
                                    reverse=True)  # a >= b: a - b stays positive, a / b divides the larger
            ops = [("+", a + b), ("*", a * b)]
            ops += [("-", a - b)] if a > b else []          # no zero: Countdown values stay positive
            ops += [("/", a // b)] if b > 1 and a % b == 0 else []  # exact division, and not the trivial / 1
            op, value = rng.choice(ops)
            pool.append((value, f"({x} {op} {y})"))
        target, solution = pool[0]
        if 1 <= target <= difficulty.max_target:
            return {"nums": nums, "target": target, "solution": solution[1:-1]}  # drop the outermost parentheses


def problem_key(row: dict) -> tuple:
    """A problem's order-free identity: its sorted numbers and its target (two rows with one key are one problem)."""
    return tuple(sorted(row["nums"])), row["target"]


def split_of(nums: Sequence[int], target: int) -> str:
    """The split a problem belongs to, from a stable hash of its order-free key (sorted numbers, target)."""
    return tiny_arith.split_of(f"countdown {' '.join(map(str, sorted(nums)))} -> {target}")


def make_split(split: str, n: int, seed: int = 0, difficulty: Difficulty = Difficulty()) -> list[dict[str, Any]]:
    """`n` distinct problems of `split`, deterministic in (split, n, seed, difficulty)."""
    return tiny_arith.sample_split("countdown", split, n, random.Random(f"countdown/{split}/{seed}"),
                                   lambda rng: generate_problem(rng, difficulty),
                                   key=problem_key,
                                   split_of_row=lambda row: split_of(row["nums"], row["target"]))


def countdown_prompt(nums: Sequence[int], target: int) -> str:
    """The user turn of a problem, in TinyZero's format: think, then the bare expression in <answer> tags."""
    return (f"Using the numbers {[int(n) for n in nums]}, write an arithmetic expression that equals {int(target)}. "
            "Use each number at most once, with +, -, * and / and parentheses as needed. Show your reasoning in "
            "<think> </think> tags, then give only the final expression in <answer> </answer> tags, "
            "for example <answer> (1 + 2) / 3 </answer>.")


def extract_expression(text: str) -> str | None:
    """The stripped content of the last complete `<answer>...</answer>` block, or None if there is none.

    Found with two reverse scans (linear time), not a lazy regex, which is quadratic on many unclosed tags."""
    close = text.rfind(_CLOSE)
    start = text.rfind(_OPEN, 0, close) if close >= 0 else -1
    return text[start + len(_OPEN):close].strip() if start >= 0 else None


class Expression(NamedTuple):
    value: Fraction | None   # None where a division by zero makes the expression undefined
    numbers: tuple[int, ...]  # the number literals, in order of appearance


class _Invalid(Exception):
    """Not an expression of the grammar, or over the size bounds."""


def parse_expression(text: str) -> Expression | None:
    """An arithmetic expression -> its exact value and number literals, or None if it is not one.

    Grammar (usual precedence, left-associative): expr := term (('+'|'-') term)*;  term := unary (('*'|'/') unary)*;
    unary := '-' unary | INTEGER | '(' expr ')'. Also read: × as *, ÷ as /, U+2212 as -. Nothing is evaluated by
    Python itself, so names, calls, `**`, `//`, decimals and anything else are simply not in the language.
    """
    if len(text) > MAX_EXPRESSION_CHARS:
        return None
    tokens: list[int | str] = []
    for number, symbol in _TOKEN.findall(text.rstrip()):
        if number:
            tokens.append(int(number))
        elif symbol in _SYMBOLS:
            tokens.append(_SYMBOLS[symbol])
        else:
            return None
    if not tokens:
        return None
    parser = _Parser(tokens)
    try:
        value = parser.expr(0)
        if parser.pos != len(tokens):
            raise _Invalid
    except _Invalid:
        return None
    return Expression(value, tuple(parser.numbers))


def _apply(op: str, a: Fraction | None, b: Fraction | None) -> Fraction | None:
    if a is None or b is None or (op == "/" and b == 0):
        return None
    return {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv}[op](a, b)


class _Parser:
    """Recursive descent over the token list; `depth` counts nesting so hostile input fails fast, not deep."""

    def __init__(self, tokens: list[int | str]) -> None:
        self.tokens, self.pos, self.numbers = tokens, 0, []

    def _peek(self) -> int | str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def expr(self, depth: int) -> Fraction | None:
        value = self.term(depth)
        while self._peek() in ("+", "-"):
            op = self.tokens[self.pos]
            self.pos += 1
            value = _apply(op, value, self.term(depth))
        return value

    def term(self, depth: int) -> Fraction | None:
        value = self.unary(depth)
        while self._peek() in ("*", "/"):
            op = self.tokens[self.pos]
            self.pos += 1
            value = _apply(op, value, self.unary(depth))
        return value

    def unary(self, depth: int) -> Fraction | None:
        if depth > MAX_DEPTH:
            raise _Invalid
        token = self._peek()
        self.pos += 1
        if token == "-":
            value = self.unary(depth + 1)
            return None if value is None else -value
        if token == "(":
            value = self.expr(depth + 1)
            if self._peek() != ")":
                raise _Invalid
            self.pos += 1
            return value
        if isinstance(token, int):
            self.numbers.append(token)
            return Fraction(token)
        raise _Invalid  # an operator or ')' where a number belongs, or the end of input


def is_correct(text: str, nums: Sequence[int], target: int | Fraction) -> bool:
    """Whether a completion's last <answer> expression uses each given number at most once and equals the target."""
    expression = extract_expression(text)
    parsed = parse_expression(expression) if expression is not None else None
    return (parsed is not None and parsed.value is not None and Counter(parsed.numbers) <= Counter(nums)
            and parsed.value == target)


def _as_nums(value: Any) -> list[int]:
    """One row's `nums` -> list of ints; accepts lists, tuples, numpy arrays and pyarrow list scalars."""
    value = value.as_py() if hasattr(value, "as_py") else value
    try:
        if isinstance(value, (str, bytes)):
            raise TypeError
        items = [n.as_py() if hasattr(n, "as_py") else n for n in value]
        if any(isinstance(n, bool) for n in items):
            raise TypeError
        nums = [operator.index(n) for n in items]
    except TypeError:
        raise RewardError(f"countdown nums {value!r:.200} is not a list of integers; pass the dataset's nums column "
                          "(one list of ints per completion)") from None
    return nums


def _as_target(value: Any) -> Fraction:
    """One row's `target` -> exact number; accepts ints (numpy ints too) and numeric strings ("98", " 27.5")."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return Fraction(value.strip()) if isinstance(value, str) else Fraction(operator.index(value))
    except (TypeError, ValueError):
        raise RewardError(f"countdown target {value!r:.200} is not an integer or a numeric string; pass the "
                          "dataset's target column (one per completion)") from None


def _check_columns(completions: Sequence, source: str, **columns: Any) -> None:
    """Each column (a dataset column repeated once per completion) must be a list as long as `completions`."""
    for name, column in columns.items():
        if column is None:
            got = f"no {name} column"
        elif isinstance(column, (str, bytes)):
            got = f"a single {type(column).__name__} as {name}"
        elif len(column) != len(completions):
            got = f"{len(column)} {name} entries"
        else:
            continue
        raise RewardError(f"{source}: {len(completions)} completions but {got}; pass the dataset's {name} column "
                          "repeated once per completion")


def countdown_reward(prompts: Sequence, completions: Sequence, nums: Sequence, target: Sequence,
                     **kwargs: Any) -> list[float]:
    """TRL reward: 1.0 where the last <answer> expression uses each number of `nums` at most once and equals
    `target`, else 0.0."""
    _check_columns(completions, "countdown_reward", nums=nums, target=target)
    return [float(is_correct(completion_text(c), _as_nums(n), _as_target(t)))
            for c, n, t in zip(completions, nums, target)]


def countdown_format_reward(prompts: Sequence, completions: Sequence, **kwargs: Any) -> list[float]:
    """TRL reward: 1.0 where the last <answer> block holds a parsable expression (right or wrong), else 0.0.

    Shaping towards the answer format; recipes weight it low (TinyZero gives 0.1 for format without the answer)."""
    _check_columns(completions, "countdown_format_reward", **{k: kwargs[k] for k in ("nums", "target") if k in kwargs})
    expressions = [extract_expression(completion_text(c)) for c in completions]
    return [float(e is not None and parse_expression(e) is not None) for e in expressions]
