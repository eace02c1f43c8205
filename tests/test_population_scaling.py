"""evals/population_scaling.py on tiny shapes: the sweep picks an lr per N, the full runs follow it, the record and
both plots are written, a rerun reuses finished runs, and a single lr runs no sweep."""

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
QUICK = ["--", "--data.eval_limit", "4", "--generation.max_new_tokens", "8", "--eval_every", "1",
         "--save_every", "1"]


def load_study():
    spec = importlib.util.spec_from_file_location("population_scaling", ROOT / "evals" / "population_scaling.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.integration  # eight trainings in fresh processes
def test_study_sweeps_runs_records_and_resumes(tmp_path):
    study = load_study()
    out, runs = tmp_path / "out", tmp_path / "runs"
    args = ["--recipe", str(ROOT / "recipes" / "tiny-arith-eggroll-blocks.yaml"), "--out", str(out), "--runs",
            str(runs), "--sizes", "2,4", "--rows", "4", "--group", "2", "--lrs", "0.01,0.05", "--sweep-wall", "1",
            "--wall", "1", *QUICK]
    study.main(args)
    record = json.loads((out / "scaling.json").read_text())
    assert record["rows_per_step"] == 4 and record["wall_s"] == 1
    assert set(record["results"]) == {"2", "4"}
    for n, entry in record["results"].items():
        assert entry["prompts_per_member"] == 4 // int(n)
        assert set(entry["sweep"]) == {"0.01", "0.05"} and entry["lr"] == entry["sweep_choice"] in (0.01, 0.05)
        best_sweep = max(entry["sweep"].values())
        assert entry["sweep"][f"{entry['lr']:g}"] == best_sweep  # the lr whose sweep run ended best
        assert entry["curve"] and entry["start"] == entry["curve"][0][1]
        assert entry["gain_best"] == entry["best"] - entry["start"] >= entry["gain_final"]
        config = (runs / f"N{n}-lr{entry['lr']:g}" / "config.yaml").read_text()
        assert f"population_size: {n}" in config and f"lr: {entry['lr']}" in config
    assert (out / "accuracy_vs_wall.png").stat().st_size > 0 and (out / "gain_vs_population.png").stat().st_size > 0
    finished = {path: path.stat().st_mtime_ns for path in runs.glob("*/metrics.jsonl")}
    assert len(finished) == 6  # 2 sizes x 2 sweep lrs + 2 full runs
    assert all((runs / f"{path.parent.name}.log").is_file() for path in finished)  # one log per run
    study.main(args)  # a rerun trains nothing: every run already finished
    assert {path: path.stat().st_mtime_ns for path in runs.glob("*/metrics.jsonl")} == finished


@pytest.mark.integration
def test_one_lr_runs_no_sweep(tmp_path):
    study = load_study()
    runs = tmp_path / "runs"
    study.main(["--recipe", str(ROOT / "recipes" / "tiny-arith-eggroll.yaml"), "--out", str(tmp_path / "out"),
                "--runs", str(runs), "--sizes", "2", "--rows", "2", "--group", "2", "--lrs", "0.03", "--wall", "1",
                *QUICK])
    assert sorted(path.name for path in runs.iterdir() if path.is_dir()) == ["N2-lr0.03"]
    record = json.loads((tmp_path / "out" / "scaling.json").read_text())
    assert record["results"]["2"]["lr"] == 0.03 and record["results"]["2"]["sweep"] == {}


def test_a_run_is_finished_only_once_it_reached_its_budget(tmp_path):
    study = load_study()
    metrics = tmp_path / "metrics.jsonl"
    assert not study.finished(metrics, 10.0)  # never started
    metrics.write_text('{"step": 0, "wall_s": 0.0}\n{"step": 1, "wall_s": 4.5}\n')
    assert not study.finished(metrics, 10.0)  # interrupted (it has adapter/ all the same)
    metrics.write_text(metrics.read_text() + '{"step": 2, "wall_s": 10.2}\n')
    assert study.finished(metrics, 10.0)
    metrics.write_text(metrics.read_text() + '{"step": 3, "wall')
    assert not study.finished(metrics, 10.0)  # torn last line: killed mid-write
