"""The embedded tiny-countdown model (scripts/train_tiny_countdown.py): it loads by name, speaks the answer format,
scores its recorded base success, and `eggroll-llm eval` evaluates it on Countdown and on a dataset of one's own."""

import json
import sys
from pathlib import Path

import pytest

from eggroll_llm import countdown
from eggroll_llm.cli import main
from eggroll_llm.models import load_model, load_tokenizer
from eggroll_llm.off_task import OFF_TASK_SETS, off_task_set
from eggroll_llm.tiny_countdown import CARELESS_STEPS, pretraining_held_out, worked_search

ROOT = Path(__file__).resolve().parents[1]
RECORDED = json.loads((ROOT / "evals" / "results" / "tiny-countdown-base.json").read_text())
sys.path.insert(0, str(ROOT / "scripts"))
import train_tiny_countdown as script  # noqa: E402


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_loads_by_name_and_round_trips_the_answer_format():
    tokenizer = load_tokenizer("tiny-countdown")
    model = load_model("tiny-countdown")
    assert model.config.model_type == "qwen2" and model.config.head_dim >= 32
    answer = worked_search([91, 6, 82, 90], 75)
    ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == answer
    assert countdown.extract_expression(tokenizer.decode(ids)) == "91-90+82-6"
    prompt = script.prompt_text(tokenizer, {"nums": [91, 6, 82, 90], "target": 75})
    assert "[91, 6, 82, 90]" in prompt and prompt.endswith("<|assistant|>\n")


def test_worked_search_is_right_where_the_greedy_search_reaches_the_target():
    for row in countdown.make_split("test", 100):
        careful = worked_search(row["nums"], row["target"])
        careless = worked_search(row["nums"], row["target"], careless=True)
        last = int(careful.split("</think>")[0].split("=")[-1].split("<think>")[-1])
        assert countdown.is_correct(careful, row["nums"], row["target"]) == (last == row["target"])
        assert careless.split("</think>")[0].count("=") <= CARELESS_STEPS
        if len(row["nums"]) == 3:
            assert careless == careful  # stopping after two operations changes only 4-number answers


def test_off_task_text_is_held_out_deterministic_and_in_the_training_mix():
    rows = pretraining_held_out(40)
    assert rows == pretraining_held_out(40) and len(rows) == 40
    assert all(countdown.split_of(row["nums"], row["target"]) == "validation" for row in rows)  # never trained on
    evaluated = {countdown.problem_key(row) for row in countdown.make_split("validation", 500)}
    assert not evaluated & {countdown.problem_key(row) for row in rows}  # nor the problems evaluations read
    short = [row for row in rows
             if len(row["nums"]) == 4 and row["answer"] != worked_search(row["nums"], row["target"])]
    assert 0 < len(short) < 40  # both answer styles of the training mix appear
    with pytest.raises(ValueError, match="evaluations read"):
        pretraining_held_out(5, seed=0)


def test_drift_reads_the_held_out_text_as_the_default_off_task_set():
    tokenizer = load_tokenizer("tiny-countdown")
    offtask = off_task_set("tiny-countdown", tokenizer, n=5)
    assert offtask.source == OFF_TASK_SETS["tiny-countdown"][0]
    assert [row["completion"] for row in offtask.rows] == [row["answer"] for row in pretraining_held_out(5)]
    assert all("Using the numbers" in row["prompt"] and row["prompt"].endswith("<|assistant|>\n")
               for row in offtask.rows)


def test_base_success_on_the_recorded_slice(capsys, tmp_path):
    subset = RECORDED["subset"]
    code, out, _ = run(capsys, "eval", "--model", "tiny-countdown", "--task", "countdown", "--split", subset["split"],
                       "--limit", str(subset["limit"]), "--json", "--out", str(tmp_path / "records.jsonl"))
    assert code == 0
    result = json.loads(out)
    assert result["n"] == subset["limit"] == 50
    assert result["accuracy"] == pytest.approx(subset["accuracy"], abs=1e-9)
    assert 0.15 <= result["accuracy"] <= 0.5
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert sum(r["correct"] for r in records) / len(records) == pytest.approx(result["accuracy"])
    assert result["eval_reward"] == pytest.approx(result["accuracy"])  # the countdown reward is the success


def test_eval_countdown_on_a_five_row_file(capsys, tmp_path):
    rows = [{"nums": r["nums"], "target": r["target"]} for r in countdown.make_split("validation", 5)]
    data = write_jsonl(tmp_path / "cd.jsonl", rows)
    code, out, _ = run(capsys, "eval", "--model", "tiny-countdown", "--task", "countdown", "--data", str(data),
                       "--rewards", "countdown", "countdown_format", "--json", "--out", str(tmp_path / "r.jsonl"))
    assert code == 0
    result = json.loads(out)
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert result["n"] == len(records) == 5
    assert result["accuracy"] == sum(r["correct"] for r in records) / 5
    assert result["eval_reward/countdown_format_reward"] == 1.0  # every answer of the model parses
    assert result["eval_reward"] == pytest.approx(result["accuracy"] + 1.0)


def test_eval_with_a_reward_of_ones_own_on_a_five_row_file(capsys, tmp_path):
    data = write_jsonl(tmp_path / "own.jsonl", [{"question": f"Say {i}.", "level": i} for i in range(5)])
    code, out, _ = run(capsys, "eval", "--data", str(data), "--prompt-column", "question", "--rewards",
                       "toy_rewards:length_reward", "--max-new-tokens", "8", "--json",
                       "--out", str(tmp_path / "r.jsonl"))
    assert code == 0
    result = json.loads(out)
    records = [json.loads(line) for line in (tmp_path / "r.jsonl").read_text().splitlines()]
    assert result["n"] == 5 and result["task"] is None and "accuracy" not in result
    assert result["eval_reward"] == pytest.approx(sum(len(r["completion"]) / 100 for r in records) / 5)
    assert [r["prompt"] for r in records] == [f"Say {i}." for i in range(5)]


def test_eval_refuses_a_long_prompt_or_truncates_it(capsys, tmp_path):
    rows = [{"question": "Say hi."}, {"question": "word " * 3000}]
    data = write_jsonl(tmp_path / "long.jsonl", rows)
    argv = ["eval", "--data", str(data), "--prompt-column", "question", "--rewards", "toy_rewards:length_reward",
            "--max-new-tokens", "4", "--json"]
    code, out, err = run(capsys, *argv)
    assert code == 2 and out == ""
    assert "row 2" in err and "--long-prompts truncate" in err and err.count("\n") == 1
    with pytest.warns(UserWarning, match="keeping their last"):
        code, out, _ = run(capsys, *argv, "--long-prompts", "truncate")
    assert code == 0 and json.loads(out)["n"] == 2


def test_eval_needs_rewards_for_a_dataset_of_ones_own(capsys, tmp_path):
    data = write_jsonl(tmp_path / "own.jsonl", [{"prompt": "Say hi."}])
    code, _, err = run(capsys, "eval", "--data", str(data))
    assert code == 2 and "--rewards" in err and err.count("\n") == 1


def test_the_recipe_pair_shares_model_data_reward_and_budget():
    from eggroll_llm.config import load_config

    eggroll = load_config(ROOT / "recipes" / "tiny-countdown-eggroll.yaml")
    grpo = load_config(ROOT / "recipes" / "tiny-countdown-grpo.yaml")
    assert (eggroll.method, grpo.method) == ("eggroll", "grpo")
    for key in ("seed", "max_wall_s", "eval_every", "rewards", "reward_weights", "model", "data"):
        assert getattr(eggroll, key) == getattr(grpo, key), key
    assert eggroll.generation.max_new_tokens == grpo.generation.max_new_tokens
    assert eggroll.model.name == "tiny-countdown" and eggroll.data.task == "countdown"
