"""runlog.py: the run's totals, its metrics log (append, read, torn lines, truncation on resume), what train()
returns, and the trackers report_to asks for."""

import json
import math

import pytest

from eggroll_llm.runlog import MetricsLog, RunTotals, report_targets, stop_note, train_output


def test_totals_advance_and_survive_a_round_trip():
    totals = RunTotals().advance(1.5, 8, 100, 40).advance(0.5, 8, 60, 40)
    assert totals.record() == {"step": 2, "wall_s": 2.0, "completions": 16, "tokens": 160, "prompt_tokens": 80,
                               "updates": 2}
    assert RunTotals.from_dict({**totals.record(), "reward_mean": 0.3}) == totals
    assert RunTotals.from_dict({"step": 3}) == RunTotals(step=3)  # a key older runs lack takes its default


def test_the_log_appends_reads_and_truncates_after_a_step(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    for step in range(4):
        log.log({"step": step, "reward_mean": step / 10})
    assert [r["step"] for r in log.read()] == [0, 1, 2, 3]
    log.truncate_after(1)  # a resume from the checkpoint of step 1 drops what came after it
    assert [r["step"] for r in log.read()] == [0, 1]


def test_a_torn_last_line_is_dropped_with_a_warning_but_a_torn_middle_line_is_an_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(json.dumps({"step": 0}) + "\n" + '{"step": 1, "rew')
    with pytest.warns(UserWarning, match="metrics.jsonl:2: dropping a torn last line"):
        assert MetricsLog(path).read() == [{"step": 0}]
    path.write_text(json.dumps({"step": 0}) + "\n{bad\n" + json.dumps({"step": 2}) + "\n")
    with pytest.raises(ValueError, match="metrics.jsonl:2: not JSON"):
        MetricsLog(path).read()


def test_trackers_get_numbers_only(tmp_path):
    seen = []

    class Tracker:
        def log(self, numbers, step):
            seen.append((numbers, step))

        def close(self):
            seen.append("closed")

    log = MetricsLog(tmp_path / "m.jsonl", [Tracker()])
    log.log({"step": 3, "reward_mean": 0.5, "note": "text", "flag": True})
    log.close()
    assert seen == [({"step": 3, "reward_mean": 0.5}, 3), "closed"]


def test_train_output_says_what_ended_the_run(tmp_path):
    records = [{"step": 0}, {"step": 1, "wall_s": 3.2, "reward_mean": 0.1}]
    budget = train_output(tmp_path, records, max_steps=50)
    assert (budget.global_step, budget.stopped_by, budget.metrics["reward_mean"]) == (1, "max_wall_s", 0.1)
    assert stop_note(budget, 50, 3.0).startswith("stopped at step 1 of 50: the max_wall_s budget of 3 s")
    done = train_output(tmp_path, records, max_steps=1)
    assert done.stopped_by == "max_steps" and stop_note(done, 1, None) == "finished 1 of 1 steps"
    assert math.isclose(budget.metrics["wall_s"], 3.2) and budget.run_dir == tmp_path


def test_report_to_names_only_installed_trackers():
    assert report_targets("none") == [] and report_targets(["none"]) == []
    with pytest.raises(ValueError, match="report_to names no_such_tracker, which is not installed"):
        report_targets(["no_such_tracker"])
