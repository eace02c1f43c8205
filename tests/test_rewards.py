"""Tests for eggroll_llm.rewards: answer extraction, numeric equality, gold parsing and the TRL-style rewards."""

from __future__ import annotations

import json
import os
import sys
from decimal import Decimal
from pathlib import Path

import pytest

from eggroll_llm.rewards import (
    REWARD_FUNCTIONS,
    RewardError,
    completion_text,
    extract_answer,
    format_reward,
    get_reward_function,
    gold_answer,
    gsm8k_reward,
    numbers_equal,
    resolve_reward,
    strict_gsm8k_reward,
)

GSM8K_DIR = Path(os.environ.get("EGGROLL_GSM8K_DIR",
                                Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"))


def _gsm8k_answers() -> list[str]:
    if not GSM8K_DIR.is_dir():
        pytest.skip(f"GSM8K data not found at {GSM8K_DIR}; set EGGROLL_GSM8K_DIR to a folder with train/test.jsonl")
    answers = []
    for split in ("train", "test"):
        with open(GSM8K_DIR / f"{split}.jsonl") as f:
            answers += [json.loads(line)["answer"] for line in f if line.strip()]
    return answers


@pytest.mark.parametrize("mode", ["flexible", "strict"])
def test_every_gsm8k_gold_scores_itself_and_not_its_successor(mode):
    answers = _gsm8k_answers()
    assert len(answers) == 8792  # 7473 train + 1319 test: the whole dataset, not a silently truncated file
    assert gsm8k_reward([""] * len(answers), answers, answers, mode=mode) == [1.0] * len(answers)
    # the same worked solution, with the final `#### N` replaced by N + 1
    wrong = [a.rsplit("####", 1)[0] + f"#### {Decimal(gold_answer(a)) + 1}" for a in answers]
    assert gsm8k_reward([""] * len(answers), wrong, answers, mode=mode) == [0.0] * len(answers)


def test_gold_answers_with_thousands_separators_are_parsed_as_numbers():
    answers = [a for a in _gsm8k_answers() if "," in a.rsplit("####", 1)[1]]
    assert answers, "GSM8K has gold answers like '#### 1,000'; the comma path must be exercised"
    for a in answers:
        assert numbers_equal(gold_answer(a), a.rsplit("####", 1)[1].strip().replace(",", ""))


# (completion, expected strict answer, expected flexible answer); expectations are compared numerically
TRICKY = [
    ("\\boxed{42}", None, "42"),
    ("The total is \\boxed{\\$1,234.00}.", None, "1234"),
    ("So the answer is $\\boxed{18 \\text{ dollars}}$.", None, "18"),
    ("#### 5\nOn reflection, \\boxed{6}", "5", "6"),
    ("#### $1,234.00", "1234", "1234"),
    ("She pays $1,250.50 in total.", None, "1250.5"),
    ("The loss is 3 - 5 = -2.\n#### -2", "-2", "-2"),
    ("#### -$5", "-5", "-5"),
    ("#### 0.5", "0.5", ".5"),
    ("#### .5", "0.5", "0.50"),
    ("#### 18.00", "18", "18"),
    ("#### 72 apples.", "72", "72"),
    ("The answer is 72.", None, "72"),
    ("Hmm, it is 72...", None, "72"),
    ("#### 1\nwait\n#### 2\nno:\n#### 3", "3", "3"),
    ("#### 7.", "7", "7"),
    ("####72", "72", "72"),
    ("#### 1,000,000", "1000000", "1000000"),
    ("Half of 10 is 5, so 5 + 5 = 10 apples", None, "10"),
    ("I do not know.", None, None),
    ("####", None, None),
    ("", None, None),
]


@pytest.mark.parametrize("text, strict, flexible", TRICKY)
def test_extract_answer_on_tricky_completions(text, strict, flexible):
    for mode, expected in (("strict", strict), ("flexible", flexible)):
        got = extract_answer(text, mode=mode)
        if expected is None:
            assert got is None, (mode, got)
        else:
            assert numbers_equal(got, expected), (mode, got, expected)
            assert "," not in got and "$" not in got and not got.endswith(".")  # the cleaning contract


@pytest.mark.parametrize("text, strict, flexible", TRICKY)
def test_gsm8k_rewards_agree_with_extraction(text, strict, flexible):
    gold = flexible or strict or "1"
    assert gsm8k_reward([""], [text], [gold]) == [float(flexible is not None)]
    assert strict_gsm8k_reward([""], [text], [gold]) == [float(numbers_equal(strict, gold))]
    assert format_reward([""], [text]) == [float(strict is not None)]


@pytest.mark.parametrize("a, b", [("18", "18.0"), ("18", "18.00"), ("-3", "-3.0"), ("0.5", ".5"), ("1,234", "1234"),
                                  ("$7", "7."), ("0", "-0")])
def test_numbers_equal_is_numeric(a, b):
    assert numbers_equal(a, b) and numbers_equal(b, a)


@pytest.mark.parametrize("a, b", [("18", "18.01"), ("-3", "3"), ("0.5", "5"), (None, "1"), ("1", None), (None, None),
                                  ("abc", "abc"), ("1.2.3", "1.2.3"), ("", ""),
                                  ("9007199254740993", "9007199254740992")])  # equal as floats, not as numbers
def test_numbers_equal_rejects(a, b):
    assert not numbers_equal(a, b)


@pytest.mark.parametrize("answer, expected", [("He has 3+4=<<3+4=7>>7\n#### 7", "7"), ("#### 1,000", "1000"),
                                              ("72", "72"), (" 18.00 ", "18"), ("$1,234.", "1234"), (72, "72"),
                                              ("#### 1\n#### 2", "2")])
def test_gold_answer(answer, expected):
    assert numbers_equal(gold_answer(answer), expected)


@pytest.mark.parametrize("answer", ["no number here", "#### none", "72 apples", None, 7.5j])
def test_gold_answer_without_a_number_names_the_text(answer):
    with pytest.raises(ValueError, match="gold answer"):
        gold_answer(answer)
    with pytest.raises(ValueError, match="no number"):
        gsm8k_reward([""], ["#### 72"], [answer])


def test_conversational_completions():
    completions = [
        [{"role": "assistant", "content": "9 - 4 = 5\n#### 5"}],
        [{"role": "user", "content": "#### 6"}, {"role": "assistant", "content": "#### 5"}],
        [{"role": "assistant", "content": [{"type": "text", "text": "The answer is "}, {"type": "text", "text": "5"}]}],
        [{"role": "assistant", "content": "#### 4"}],
    ]
    assert completion_text(completions[1]) == "#### 5"  # the assistant's turn, not the user's
    assert completion_text([{"content": "#### 1"}, {"content": "#### 2"}]) == "#### 2"  # no roles: the last message
    assert gsm8k_reward([""] * 4, completions, ["5"] * 4) == [1.0, 1.0, 1.0, 0.0]
    assert strict_gsm8k_reward([""] * 4, completions, ["5"] * 4) == [1.0, 1.0, 0.0, 0.0]
    assert format_reward([""] * 4, completions) == [1.0, 1.0, 0.0, 1.0]


@pytest.mark.parametrize("bad", [[], [{"role": "assistant"}, "text"], {"content": "#### 5"}, None, 5])
def test_unreadable_completion_is_an_error(bad):
    with pytest.raises(ValueError, match="cannot read a completion"):
        completion_text(bad)


def test_called_the_way_trl_calls_reward_functions():
    # TRL 1.x GRPOTrainer passes everything by keyword: every dataset column plus its own extras
    kwargs = dict(prompts=["q1", "q2"], completions=["#### 3", "#### 4"], completion_ids=[[1], [2]],
                  answer=["#### 3", "#### 5"], question=["q1", "q2"], trainer_state=None,
                  log_extra=lambda *a: None, log_metric=lambda *a: None)
    assert gsm8k_reward(**kwargs) == [1.0, 0.0]
    assert strict_gsm8k_reward(**kwargs) == [1.0, 0.0]
    assert format_reward(**kwargs) == [1.0, 1.0]


@pytest.mark.parametrize("fn", [gsm8k_reward, strict_gsm8k_reward, format_reward])
def test_length_mismatch_is_an_error(fn):
    with pytest.raises(ValueError, match="2 completions but 1 gold answers"):
        fn(["", ""], ["#### 1", "#### 2"], answer=["1"])
    with pytest.raises(ValueError, match="list of gold answers"):
        fn(["", ""], ["#### 1", "#### 2"], answer="12")


def test_unknown_mode_is_an_error_naming_the_valid_modes():
    with pytest.raises(ValueError, match="strict, flexible"):
        extract_answer("#### 1", mode="lenient")
    with pytest.raises(ValueError, match="strict, flexible"):
        gsm8k_reward([""], ["#### 1"], ["1"], mode="exact")


def test_registry():
    assert set(REWARD_FUNCTIONS) == {"gsm8k", "gsm8k_strict", "format", "countdown", "countdown_format"}
    for name, fn in REWARD_FUNCTIONS.items():
        assert get_reward_function(name) is fn
    # TRL logs rewards by __name__: distinct names keep the per-function curves apart
    assert len({fn.__name__ for fn in REWARD_FUNCTIONS.values()}) == len(REWARD_FUNCTIONS)
    with pytest.raises(ValueError, match=r"did you mean 'gsm8k'\?.*gsm8k, gsm8k_strict, format"):
        get_reward_function("gsm8")
    with pytest.raises(ValueError, match="valid names: gsm8k, gsm8k_strict, format"):
        get_reward_function("accuracy")


def test_an_import_path_finds_a_module_in_the_working_directory_without_touching_sys_path(tmp_path, monkeypatch):
    (tmp_path / "my_cwd_rewards.py").write_text("def score(prompts, completions, **kw):\n"
                                                "    return [1.0] * len(completions)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    before = list(sys.path)
    fn = resolve_reward("my_cwd_rewards:score")
    assert fn(["p"], ["c", "d"]) == [1.0, 1.0]
    assert sys.path == before
    with pytest.raises(RewardError, match="cannot import no_such_cwd_module"):
        resolve_reward("no_such_cwd_module:score")
