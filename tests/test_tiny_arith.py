"""tiny-arith generator: deterministic, disjoint splits, worked steps that are arithmetically right, knobs honoured."""

import re

import pytest

from eggroll_llm.rewards import gsm8k_reward
from eggroll_llm.tiny_arith import Difficulty, make_split, split_of

STEP = re.compile(r"^(\d+)([-+*/])(\d+)=(\d+)$")
FINAL = re.compile(r"^#### (\d+)$")


def parse(row: dict) -> tuple[int, list[tuple[int, str, int, int]], int]:
    """(starting quantity from the question, [(a, op, b, c)] per worked line, the `#### N` number)."""
    *lines, last = row["answer"].split("\n")
    steps = [(int(m[1]), m[2], int(m[3]), int(m[4])) for m in map(STEP.match, lines) if m]
    assert len(steps) == len(lines), f"unparsable worked step in {row['answer']!r}"
    final = FINAL.match(last)
    assert final, f"answer does not end with '#### N': {row['answer']!r}"
    start = re.match(r"^\w+ has (\d+) ", row["question"])
    assert start, f"question does not open with the starting quantity: {row['question']!r}"
    return int(start[1]), steps, int(final[1])


def test_same_arguments_give_same_rows_and_seeds_differ():
    assert make_split("train", 300, seed=3) == make_split("train", 300, seed=3)
    assert make_split("train", 300, seed=3) != make_split("train", 300, seed=4)
    assert make_split("test", 50, seed=3) == make_split("test", 300, seed=3)[:50]  # a smaller n is a prefix


def test_splits_are_disjoint_and_rows_distinct():
    questions = {split: [r["question"] for r in make_split(split, n)]
                 for split, n in (("train", 3000), ("validation", 1000), ("test", 1000))}
    for split, qs in questions.items():
        assert len(set(qs)) == len(qs)
        assert {split_of(q) for q in qs} == {split}
    assert not set(questions["train"]) & set(questions["validation"])
    assert not set(questions["train"]) & set(questions["test"])
    assert not set(questions["validation"]) & set(questions["test"])


def test_worked_steps_are_correct_and_chain_to_the_final_answer():
    apply = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}
    rows = make_split("validation", 500, seed=1)
    for row in rows:
        start, steps, final = parse(row)
        value = start
        for a, op, b, c in steps:
            assert a == value, f"step starts from {a}, expected the running value {value}: {row}"
            assert op != "/" or a % b == 0, f"inexact division {a}/{b}: {row}"
            assert apply[op](a, b) == c, f"{a}{op}{b}={c} is wrong: {row}"
            assert c > 0, f"quantities stay positive: {row}"
            value = c
        assert final == value
        # one sentence to set up, one per step, one question
        assert len(re.findall(r"[.?](?: |$)", row["question"])) == len(steps) + 2
    assert {op for row in rows for _, op, _, _ in parse(row)[1]} == set("+-*/")
    # the gold answers are in the format the shared GSM8K reward reads
    answers = [row["answer"] for row in rows]
    assert gsm8k_reward(None, answers, answers) == [1.0] * len(rows)


@pytest.mark.parametrize("knobs", [dict(min_steps=2, max_steps=2), dict(min_steps=3, max_steps=4),
                                   dict(max_start=5, max_operand=3, max_factor=2)])
def test_difficulty_knobs_are_respected(knobs):
    difficulty = Difficulty(**knobs)
    parsed = [parse(row) for row in make_split("train", 400, seed=2, difficulty=difficulty)]
    counts = {len(steps) for _, steps, _ in parsed}
    assert counts == set(range(difficulty.min_steps, difficulty.max_steps + 1))
    assert all(2 <= start <= difficulty.max_start for start, _, _ in parsed)
    for _, steps, _ in parsed:
        for _, op, b, _ in steps:
            assert (1 <= b <= difficulty.max_operand) if op in "+-" else (2 <= b <= difficulty.max_factor)


@pytest.mark.parametrize("knobs", [dict(min_steps=0), dict(min_steps=3, max_steps=2), dict(max_start=1),
                                   dict(max_operand=0), dict(max_factor=1)])
def test_bad_knobs_raise(knobs):
    with pytest.raises(ValueError, match="tiny-arith needs"):
        Difficulty(**knobs)


def test_bad_split_size_or_exhausted_difficulty_raise():
    with pytest.raises(ValueError, match="unknown tiny-arith split"):
        make_split("dev", 10)
    with pytest.raises(ValueError, match="n >= 1"):
        make_split("test", 0)
    # one step from a start of 2 allows about 3000 questions, about 310 of them in test
    narrow = Difficulty(min_steps=1, max_steps=1, max_start=2, max_operand=1, max_factor=2)
    with pytest.raises(ValueError, match="distinct test problems"):
        make_split("test", 400, difficulty=narrow)
