"""Countdown: solvable deterministic disjoint splits, a parser that is exact and safe, TRL-shaped rewards."""

import random
import subprocess
import sys
from fractions import Fraction

import numpy as np
import pytest

from eggroll_llm.countdown import (
    MAX_DEPTH,
    MAX_EXPRESSION_CHARS,
    Difficulty,
    countdown_prompt,
    extract_expression,
    make_split,
    parse_expression,
    split_of,
)
from eggroll_llm.rewards import (
    RewardError,
    countdown_format_reward,
    countdown_reward,
    get_reward_function,
)


def answer(expression: str) -> str:
    return f"<think> some working </think>\n<answer> {expression} </answer>"


def score(text: str, nums: list[int], target) -> float:
    """countdown_reward on one completion."""
    return countdown_reward(["p"], [text], nums=[nums], target=[target])[0]


def value(expression: str) -> Fraction | None:
    parsed = parse_expression(expression)
    assert parsed is not None, f"{expression!r} should parse"
    return parsed.value


# ---- generator -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("split", ["train", "validation", "test"])
def test_every_witness_solution_scores_one_and_rows_match_the_knobs(split):
    rows = make_split(split, 300, seed=5)
    completions = [answer(row["solution"]) for row in rows]
    rewards = countdown_reward(["p"] * len(rows), completions, nums=[r["nums"] for r in rows],
                               target=[r["target"] for r in rows])
    assert rewards == [1.0] * len(rows), [r for r, x in zip(rows, rewards) if x != 1.0][:3]
    for row in rows:
        assert set(row) == {"nums", "target", "solution"}
        assert 3 <= len(row["nums"]) <= 4 and all(1 <= n <= 100 for n in row["nums"])
        assert isinstance(row["target"], int) and 1 <= row["target"] <= 100
    assert {len(row["nums"]) for row in rows} == {3, 4}
    assert {op for row in rows for op in "+-*/" if op in row["solution"]} == set("+-*/")


def test_knobs_are_honoured_and_bad_knobs_refused():
    d = Difficulty(min_nums=2, max_nums=5, max_number=9, max_target=30)
    rows = make_split("train", 200, seed=1, difficulty=d)
    assert {len(r["nums"]) for r in rows} == {2, 3, 4, 5}
    assert all(1 <= n <= 9 for r in rows for n in r["nums"]) and all(1 <= r["target"] <= 30 for r in rows)
    assert countdown_reward(["p"] * 200, [answer(r["solution"]) for r in rows], nums=[r["nums"] for r in rows],
                            target=[r["target"] for r in rows]) == [1.0] * 200
    for bad in ({"min_nums": 1}, {"min_nums": 4, "max_nums": 3}, {"max_number": 0}, {"max_target": 0}):
        with pytest.raises(ValueError, match="countdown needs"):
            Difficulty(**bad)
    with pytest.raises(ValueError, match="unknown countdown split"):
        make_split("dev", 3)
    with pytest.raises(ValueError, match="n >= 1"):
        make_split("train", 0)


def test_same_arguments_give_same_rows_and_seeds_differ():
    assert make_split("train", 200, seed=3) == make_split("train", 200, seed=3)
    assert make_split("train", 200, seed=3) != make_split("train", 200, seed=4)
    assert make_split("test", 50, seed=3) == make_split("test", 200, seed=3)[:50]  # a smaller n is a prefix


def test_splits_are_disjoint_by_order_free_key_and_rows_distinct():
    keys = {split: [(tuple(sorted(r["nums"])), r["target"]) for r in make_split(split, n)]
            for split, n in (("train", 2000), ("validation", 500), ("test", 500))}
    for split, ks in keys.items():
        assert len(set(ks)) == len(ks)
        assert {split_of(list(nums), target) for nums, target in ks} == {split}
    assert not set(keys["train"]) & set(keys["validation"])
    assert not set(keys["train"]) & set(keys["test"])
    assert not set(keys["validation"]) & set(keys["test"])
    assert split_of([3, 1, 2], 6) == split_of([2, 3, 1], 6)  # the order of the numbers does not move a problem


def test_prompt_states_numbers_target_rule_and_answer_format():
    prompt = countdown_prompt([44, 19, 35], 98)
    assert "[44, 19, 35]" in prompt and "98" in prompt
    assert "at most once" in prompt and "<answer> (1 + 2) / 3 </answer>" in prompt and "<think>" in prompt
    assert countdown_prompt(np.array([1, 2, 3]), np.int64(6)) == countdown_prompt([1, 2, 3], 6)


# ---- parser ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("expression, expected", [
    ("2 + 3 * 4", 14), ("(2 + 3) * 4", 20), ("8 - 3 - 2", 3), ("8 / 4 / 2", 1), ("-3 + 5", 2), ("--3", 3),
    ("2 * -3", -6), ("7 / 2 * 2", 7), ("1 / 3 + 1 / 3 + 1 / 3", 1), ("7/2", Fraction(7, 2)), ("((5))", 5),
    ("6 \u00d7 7", 42), ("84 \u00f7 2", 42), ("50 \u2212 8", 42), ("\n 1+2\t", 3),
])
def test_parser_precedence_associativity_unicode_and_exactness(expression, expected):
    assert value(expression) == expected


def test_parser_agrees_with_independently_built_random_expressions():
    """Property: random trees rendered with random spacing, unicode operators and redundant parentheses parse to
    the value computed alongside them in Fractions, with their literals in order."""
    rng = random.Random(0)
    spellings = {"+": ["+"], "-": ["-", "\u2212"], "*": ["*", "\u00d7"], "/": ["/", "\u00f7"]}
    compute = {"+": Fraction.__add__, "-": Fraction.__sub__, "*": Fraction.__mul__, "/": Fraction.__truediv__}

    def build(leaves: list[int]) -> tuple[str, Fraction, list[int]]:
        if len(leaves) == 1:
            return str(leaves[0]), Fraction(leaves[0]), leaves
        cut = rng.randint(1, len(leaves) - 1)
        (left, a, la), (right, b, lb) = build(leaves[:cut]), build(leaves[cut:])
        op = rng.choice("+-*" + ("/" if b != 0 else ""))
        space = rng.choice(["", " ", "  "])
        return f"({left}{space}{rng.choice(spellings[op])}{space}{right})", compute[op](a, b), la + lb

    for _ in range(500):
        text, expected, literals = build([rng.randint(0, 120) for _ in range(rng.randint(1, 6))])
        parsed = parse_expression(text)
        assert parsed is not None and parsed.value == expected and list(parsed.numbers) == literals, text


def test_division_by_zero_parses_as_undefined():
    for text in ("1 / 0", "5 / (3 - 3)", "(1 / 0) * 0", "0 / 0 + 1"):
        parsed = parse_expression(text)
        assert parsed is not None and parsed.value is None, text


@pytest.mark.parametrize("text", [
    "", "   ", "1 +", "* 2", "(1 + 2", "1 + 2)", "()", "1 2", "2 ** 3", "7 // 2", "1.5 + 2", "3!", "1 = 1",
    "__import__('os').system('echo hi')", "().__class__.__bases__[0].__subclasses__()", "exec('1')",
    "eval('1+1')", "open('/etc/passwd')", "1 + x", "\u0663 + 1", "lambda: 1", "1; 2", "[1]",
])
def test_non_expressions_do_not_parse(text):
    assert parse_expression(text) is None


def test_size_and_depth_bounds_refuse_hostile_input_without_raising():
    within = "(" * MAX_DEPTH + "1" + ")" * MAX_DEPTH
    assert len(within) <= MAX_EXPRESSION_CHARS and value(within) == 1
    assert parse_expression("(" * (MAX_DEPTH + 2) + "1" + ")" * (MAX_DEPTH + 2)) is None
    assert parse_expression("-" * (MAX_DEPTH + 2) + "1") is None
    assert parse_expression("(" * 10_000 + "1" + ")" * 10_000) is None  # over the length bound
    assert parse_expression("+".join(["1"] * (MAX_EXPRESSION_CHARS // 2 + 1))) is None
    assert parse_expression("9" * (MAX_EXPRESSION_CHARS + 1)) is None
    hostile = "<answer>" * 50_000 + "1+2"  # no closing tag: linear scan, no answer
    assert extract_expression(hostile) is None and score(hostile, [1, 2], 3) == 0.0


def test_random_garbage_never_raises():
    rng = random.Random(1)
    alphabet = "0123456789+-*/()  .x\u00d7\u00f7\u2212_'"
    for _ in range(2000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        parsed = parse_expression(text)
        assert parsed is None or isinstance(parsed.numbers, tuple)
        assert score(f"<answer>{text}</answer>", [1, 2, 3], 6) in (0.0, 1.0)


def test_extract_takes_the_last_complete_block():
    assert extract_expression("<answer>1</answer> then <answer> 2 + 3 </answer> done") == "2 + 3"
    assert extract_expression("<answer> 1 <answer> 2 </answer>") == "2"
    assert extract_expression("<answer>1</answer> <answer>2") == "1"
    assert extract_expression("no tags") is None and extract_expression("</answer><answer>") is None


# ---- rewards ---------------------------------------------------------------------------------------------------

def test_reward_scores_right_answers_one_and_everything_else_zero():
    nums, target = [44, 19, 35], 98
    assert score(answer("44 + 19 + 35"), nums, target) == 1.0
    assert score(answer("35 + (44 + 19)"), nums, target) == 1.0
    for wrong in [
        "44 + 19 - 35",                 # wrong value
        "44 + 19 + 35 + 0",             # a number that is not given
        "44 + 44 + 10",                 # a number reused (and others missing)
        "44 + 19 + 35 - 19 + 19",       # a number reused, the value still right
        "(44 + 19) * 35 / 35 + 35 - 63",  # unavailable numbers around right ones
        "44 + 54",                      # right value, but 54 is not given
        "98",                           # the bare target
        "44 + 19 + 35 / 0",             # division by zero
        "44 + 19 + 35 = 98",            # an equation, not an expression
        "", "__import__('os')", "44 + 19 + 35 # comment",
    ]:
        assert score(answer(wrong), nums, target) == 0.0, wrong
    assert score(answer("44 + 19 + 35"), [44, 19, 35, 2], target) == 1.0  # numbers may be left out
    assert score(answer("44 + 19 + 35"), [44, 19, 2, 2], target) == 0.0  # 35 is not among them
    assert score(answer("2 * 49"), [2, 49, 49], target) == 1.0  # a number given twice may be used once
    assert score("44 + 19 + 35", nums, target) == 0.0  # no <answer> block
    assert score(answer("44 + 19 + 35"), nums, 99) == 0.0


def test_reward_uses_multiset_and_exact_arithmetic():
    assert score(answer("58 / 58 + 39"), [58, 39, 58], 40) == 1.0  # a number given twice may be used twice
    assert score(answer("58 + 39"), [58, 39, 58], 97) == 1.0  # ... or once
    assert score(answer("58 + 58 + 58"), [58, 39, 58], 174) == 0.0  # but not three times
    assert score(answer("7 \u00f7 2 \u00d7 2 \u2212 1"), [7, 2, 2, 1], 6) == 1.0
    assert score(answer("1000001 / 1000000"), [1000001, 1000000], 1) == 0.0  # within 1e-5 but not equal
    assert score(answer("7 / 2"), [7, 2], "3.5") == 1.0  # a numeric-string target is read exactly


def test_last_answer_block_wins():
    nums, target = [1, 2, 3], 6
    assert score("<answer> 1 + 2 </answer> wait: <answer> 1 + 2 + 3 </answer>", nums, target) == 1.0
    assert score("<answer> 1 + 2 + 3 </answer> no: <answer> 1 * 2 </answer>", nums, target) == 0.0


def test_conversational_completions_and_column_types_are_accepted():
    conversation = [{"role": "user", "content": "q"}, {"role": "assistant", "content": answer("(1 + 2) * 3")}]
    assert countdown_reward(["p"], [conversation], nums=[[1, 2, 3]], target=[9]) == [1.0]
    assert countdown_format_reward(["p"], [conversation]) == [1.0]
    assert countdown_reward(["p"] * 2, [answer("(1 + 2) * 3")] * 2, nums=np.array([[1, 2, 3], [3, 2, 1]]),
                            target=np.array([9, 9])) == [1.0, 1.0]
    pa = pytest.importorskip("pyarrow")
    table = pa.table({"nums": [[1, 2, 3]], "target": [9]})
    assert countdown_reward(["p"], [answer("(1 + 2) * 3")], nums=table["nums"], target=table["target"]) == [1.0]
    assert countdown_reward(["p"], [answer("(1 + 2) * 3")], nums=[(1, 2, 3)], target=[" 9 "]) == [1.0]


def test_format_reward_credits_any_parsable_answer():
    completions = [answer("44 + 19 + 35"), answer("1 + 1"), answer("5 / 0"), answer("two plus two"),
                   "44 + 19 + 35", answer(""), "<answer>1 + 2"]
    assert countdown_format_reward(["p"] * 7, completions) == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_misaligned_or_unusable_columns_raise_reward_error():
    two = [answer("1 + 2"), answer("1 + 2")]
    with pytest.raises(RewardError, match="2 completions but 1 nums entries"):
        countdown_reward(["p"] * 2, two, nums=[[1, 2]], target=[3, 3])
    with pytest.raises(RewardError, match="2 completions but 3 target entries"):
        countdown_reward(["p"] * 2, two, nums=[[1, 2]] * 2, target=[3, 3, 3])
    with pytest.raises(RewardError, match="no target column"):
        countdown_reward(["p"] * 2, two, nums=[[1, 2]] * 2, target=None)
    with pytest.raises(RewardError, match="a single str as target"):
        countdown_reward(["p"] * 2, two, nums=[[1, 2]] * 2, target="33")
    with pytest.raises(RewardError, match="2 completions but 1 nums entries"):
        countdown_format_reward(["p"] * 2, two, nums=[[1, 2]])
    with pytest.raises(RewardError, match="not a list of integers"):
        countdown_reward(["p"] * 2, two, nums=[1, 2], target=[3, 3])  # one row's nums instead of the column
    with pytest.raises(RewardError, match="not a list of integers"):
        countdown_reward(["p"], two[:1], nums=[[1.5, 2]], target=[3])
    with pytest.raises(RewardError, match="not an integer or a numeric string"):
        countdown_reward(["p"], two[:1], nums=[[1, 2]], target=["three"])
    with pytest.raises(RewardError, match="cannot read a completion"):
        countdown_reward(["p"], [42], nums=[[1, 2]], target=[3])


def test_registered_under_stable_names_and_importable_in_either_order():
    assert get_reward_function("countdown") is countdown_reward
    assert get_reward_function("countdown_format") is countdown_format_reward
    for first, second in (("countdown", "rewards"), ("rewards", "countdown")):
        code = (f"import eggroll_llm.{first}, eggroll_llm.{second}; from eggroll_llm.rewards import REWARD_FUNCTIONS;"
                " assert REWARD_FUNCTIONS['countdown'].__module__ == 'eggroll_llm.countdown'")
        subprocess.run([sys.executable, "-c", code], check=True)
