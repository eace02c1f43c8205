"""`eggroll-llm compare`: synthetic run directories in, report numbers checked against the files and by hand."""

import argparse
import json
import warnings
from pathlib import Path

import pytest
import yaml

from eggroll_llm.compare import RunDirError, add_compare_parser, compare, rolling_mean

# Held-out accuracy at steps 0, 2, 4, 6, 8, 10 of two synthetic runs.
# run_a: 2 s and 64 completions per step; run_b: 5 s and 16 completions per step, 2 optimizer updates per step.
ACC_A = [0.30, 0.40, 0.55, 0.50, 0.60, 0.58]
ACC_B = [0.30, 0.45, 0.52, 0.53, 0.54, 0.54]


def write_run(path: Path, *, method: str, accuracies: list[float], step_s: float, per_step: int,
              task: str = "tiny-arith", updates_per_step: int | None = None) -> Path:
    path.mkdir(parents=True)
    config = {"method": method, "output_dir": str(path), "seed": 0, "model": {"name": "tiny-arith"},
              "data": {"task": task, "eval_split": "validation"}}
    (path / "config.yaml").write_text(yaml.safe_dump(config))
    records = [{"step": 0, "wall_s": 0.0, "completions": 0, "tokens": 0, "eval_accuracy": accuracies[0],
                "eval_strict_accuracy": accuracies[0] / 2, "eval_n": 200}]
    tokens = 0
    for step in range(1, 2 * (len(accuracies) - 1) + 1):
        new_tokens = per_step * (10 + step)  # completions grow longer as training goes on
        tokens += new_tokens
        record = {"step": step, "wall_s": step * step_s, "completions": step * per_step, "tokens": tokens,
                  "reward_mean": 0.3 + 0.02 * step + 0.05 * (-1) ** step, "tokens_per_s": new_tokens / step_s,
                  "peak_mem_mb": 100.0 + 3 * step + len(method)}
        if updates_per_step:
            record["updates"] = step * updates_per_step
        if step % 2 == 0:
            accuracy = accuracies[step // 2]
            record.update(eval_accuracy=accuracy, eval_strict_accuracy=accuracy / 2, eval_n=200)
        records.append(record)
    (path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


@pytest.fixture
def runs(tmp_path):
    return [write_run(tmp_path / "run_a", method="eggroll", accuracies=ACC_A, step_s=2.0, per_step=64),
            write_run(tmp_path / "run_b", method="grpo", accuracies=ACC_B, step_s=5.0, per_step=16,
                      updates_per_step=2)]


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    add_compare_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["compare", *argv])
    return args.func(args)


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in (path / "metrics.jsonl").read_text().splitlines()]


def test_report_and_summary_numbers_match_the_files(runs, tmp_path, capsys):
    out = tmp_path / "report"
    assert run_cli([str(r) for r in runs] + ["--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    report = (out / "report.md").read_text()
    assert summary["target_accuracy"] == min(max(ACC_A), max(ACC_B)) == 0.54
    for run, label in zip(runs, ["eggroll:run_a", "grpo:run_b"]):
        records = read_metrics(run)
        evals = [r for r in records if "eval_accuracy" in r]
        best = max(evals, key=lambda r: r["eval_accuracy"])
        got = summary["runs"][label]
        assert got["final_accuracy"] == evals[-1]["eval_accuracy"]
        assert (got["best_accuracy"], got["best_wall_s"], got["best_step"]) == (best["eval_accuracy"], best["wall_s"],
                                                                                 best["step"])
        assert (got["completions"], got["tokens"]) == (records[-1]["completions"], records[-1]["tokens"])
        rates = [r["tokens_per_s"] for r in records[1:]]
        assert got["mean_tokens_per_s"] == pytest.approx(sum(rates) / len(rates))
        assert got["peak_mem_mb"] == max(r["peak_mem_mb"] for r in records[1:])
        assert got["steps"] == 10
        assert label in report
        assert f"{got['best_accuracy']:.1%} at {got['best_wall_s']:.1f} s (step {got['best_step']})" in report
    assert "| final accuracy | 58.0% | 54.0% |" in report
    # updates: one per training step unless the log says otherwise (run_b logs 2 per step)
    assert summary["runs"]["eggroll:run_a"]["updates"] == 10 and summary["runs"]["grpo:run_b"]["updates"] == 20
    # by hand: run_a first reaches 0.54 at step 4 (0.55, 8 s, 256 completions); run_b at step 8 (40 s, 128)
    a, b = summary["runs"]["eggroll:run_a"], summary["runs"]["grpo:run_b"]
    assert (a["time_to_target_s"], a["completions_to_target"]) == (8.0, 256)
    assert (b["time_to_target_s"], b["completions_to_target"]) == (40.0, 128)
    assert "| wall-clock to 54.0% | 8.0 s | 40.0 s |" in report
    assert "**eggroll:run_a** reaches 54.0% held-out accuracy first in wall-clock (8.0 s)" in report
    assert "**grpo:run_b** is the most completion-efficient, reaching it after 128 completions" in report
    assert "**eggroll:run_a** has the best final accuracy (58.0%)" in report
    for image in ("accuracy_vs_wall.png", "accuracy_vs_completions.png", "reward.png"):
        assert f"]({image})" in report
    printed = capsys.readouterr().out
    assert "| final accuracy | 58.0% | 54.0% |" in printed and str(out / "report.md") in printed


def test_plots_are_valid_pngs(runs, tmp_path):
    import matplotlib.image

    compare(runs, tmp_path / "out")
    for name in ("accuracy_vs_wall.png", "accuracy_vs_completions.png", "reward.png"):
        path = tmp_path / "out" / name
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = matplotlib.image.imread(path)
        assert pixels.ndim == 3 and pixels.shape[0] > 200 and pixels.shape[1] > 300
        assert pixels.std() > 0.01  # something was drawn, not a blank canvas
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]  # no temporary files left


def test_explicit_target_not_reached_and_labels(runs, tmp_path):
    out = tmp_path / "out"
    assert run_cli([str(r) for r in runs] + ["--out", str(out), "--target-accuracy", "0.59", "--labels", "es, rl"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert list(summary["runs"]) == ["es", "rl"] and summary["target_source"] == "--target-accuracy"
    assert summary["runs"]["es"]["time_to_target_s"] == 16.0  # 0.60 at step 8
    assert summary["runs"]["rl"]["time_to_target_s"] is None
    report = (out / "report.md").read_text()
    assert "| wall-clock to 59.0% | 16.0 s | not reached |" in report
    assert "**rl** never reaches it" in report


def test_labels_count_must_match(runs, tmp_path):
    with pytest.raises(ValueError, match="one label per RUN_DIR"):
        compare(runs, tmp_path / "out", labels=["only-one"])
    with pytest.raises(ValueError, match="fraction"):
        compare(runs, tmp_path / "out", target_accuracy=59.0)


def test_duplicate_default_labels_are_disambiguated(tmp_path):
    runs = [write_run(tmp_path / d / "seed0", method="eggroll", accuracies=ACC_A, step_s=2.0, per_step=64)
            for d in ("x", "y")]
    summary = compare(runs, tmp_path / "out")
    assert list(summary["runs"]) == ["eggroll:seed0", "eggroll:seed0#2"]


def test_not_a_run_dir_is_refused_before_any_output(runs, tmp_path):
    stray = tmp_path / "stray"
    stray.mkdir()
    out = tmp_path / "out"
    with pytest.raises(RunDirError, match=r"stray is not a run directory \(no metrics.jsonl\); pass folders written "
                                          r"by `eggroll-llm train`"):
        compare([*runs, stray], out)
    assert not out.exists()
    with pytest.raises(RunDirError, match="not a run directory"):
        compare([tmp_path / "missing"], out)


def test_empty_metrics_file_is_an_error(runs, tmp_path):
    (runs[1] / "metrics.jsonl").write_text("")
    with pytest.raises(RunDirError, match="run_b is not a run directory.*metrics.jsonl is empty"):
        compare(runs, tmp_path / "out")


def test_task_mismatch_warns_but_reports(tmp_path):
    runs = [write_run(tmp_path / "a", method="eggroll", accuracies=ACC_A, step_s=2.0, per_step=64),
            write_run(tmp_path / "b", method="grpo", accuracies=ACC_B, step_s=5.0, per_step=16, task="gsm8k")]
    with pytest.warns(UserWarning, match="different tasks"):
        compare(runs, tmp_path / "out")
    assert (tmp_path / "out" / "report.md").is_file()


def test_held_out_mismatch_warns(tmp_path):
    runs = [write_run(tmp_path / "a", method="eggroll", accuracies=ACC_A, step_s=2.0, per_step=64),
            write_run(tmp_path / "b", method="grpo", accuracies=ACC_B, step_s=5.0, per_step=16)]
    metrics = runs[1] / "metrics.jsonl"
    metrics.write_text(metrics.read_text().replace('"eval_n": 200', '"eval_n": 50'))
    with pytest.warns(UserWarning, match=r"different held-out sets \(200 of validation, 50 of validation\)"):
        compare(runs, tmp_path / "out")


def test_same_held_out_set_does_not_warn(runs, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compare(runs, tmp_path / "out")


def test_rolling_mean_matches_a_loop():
    values = [0.1, 0.5, 0.2, 0.9, 0.4, 0.3, 0.8]
    for window in (1, 3, 10):
        expected = [sum(values[max(0, i - window + 1):i + 1]) / len(values[max(0, i - window + 1):i + 1])
                    for i in range(len(values))]
        assert rolling_mean(values, window) == pytest.approx(expected)
