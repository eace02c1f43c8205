"""Fault injection: a run directory nothing can corrupt, validation before any write, clean interrupts, bounded inputs.

Real `eggroll-llm train` processes are killed (-9), interrupted (SIGINT, SIGTERM), raced on one directory and fed
bad values; each case checks that nothing is lost, that the error is one line with a non-zero exit, and that a
resumed run ends with the metrics (timings aside) and adapter of an uninterrupted one. Cases that need real
processes or several runs are the `integration` tier; the 20-kill run is `slow`; one-line errors stay in the default
run.
"""

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from filelock import FileLock
from safetensors import SafetensorError
from safetensors.torch import load_file

from eggroll_llm import checkpoint, rundir
from eggroll_llm.checkpoint import list_checkpoints
from eggroll_llm.cli import main
from eggroll_llm.runlog import TIMING_KEYS, MetricsLog

ROOT = Path(__file__).resolve().parents[1]
RECIPE = {"seed": 1, "rewards": ["gsm8k", "toy_rewards:length_reward"], "max_steps": 6, "eval_every": 2,
          "save_every": 1, "data": {"eval_limit": 4}, "generation": {"max_new_tokens": 24},
          "es": {"population_size": 4, "members_per_prompt": 2, "prompts_per_member": 2, "sigma": 0.1, "lr": 0.05,
                 "adapter_rank": 2}}


@pytest.fixture(scope="module")
def recipe(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("recipe") / "recipe.yaml"
    path.write_text(yaml.safe_dump(RECIPE))
    return path


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(ROOT / "tests"), str(ROOT)])}


def start(recipe: Path, run: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "eggroll_llm.cli", "train", str(recipe), "--output_dir", str(run),
                             "--no-progress", *extra], env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def error_lines(err: str) -> list[str]:
    """stderr without progress bars (a model loading bar may precede an error found after loading)."""
    return [line for line in err.splitlines() if "%|" not in line and line.strip()]


def untimed(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in MetricsLog(run / "metrics.jsonl").read()]


def final_state(run: Path) -> dict:
    return load_file(str(list_checkpoints(run)[-1] / "state.safetensors"))


def assert_same_run(run: Path, reference: Path) -> None:
    assert untimed(run) == untimed(reference)
    ends = final_state(run), final_state(reference)
    assert ends[0].keys() == ends[1].keys()
    for key in ends[0]:
        torch.testing.assert_close(ends[0][key], ends[1][key], rtol=0, atol=1e-6, msg=key)
    exports = [load_file(str(r / "adapter" / "adapter_model.safetensors")) for r in (run, reference)]
    assert all(torch.equal(exports[0][k], exports[1][k]) for k in exports[0])


@pytest.fixture(scope="module")
def uninterrupted(recipe, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("whole") / "run"
    assert main(["train", str(recipe), "--output_dir", str(run), "--no-progress"]) == 0
    return run


def wait_for(condition, timeout: float = 120.0, what: str = "the condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def steps_logged(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


# --- interrupts ------------------------------------------------------------------------------------------------------

@pytest.mark.integration
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_mid_run_saves_the_step_and_says_how_to_continue(recipe, uninterrupted, tmp_path, signum, code):
    run = tmp_path / "run"
    process = start(recipe, run)
    wait_for(lambda: steps_logged(run) >= 2 or process.poll() is not None, what="step 1")
    process.send_signal(signum)
    _, err = process.communicate(timeout=120)
    assert process.returncode == code, err[-2000:]
    assert "Traceback" not in err
    line = next(line for line in err.splitlines() if line.startswith("interrupted at step"))
    step = int(line.split()[3].rstrip(";"))
    assert "continue with: eggroll-llm train" in line and line.endswith("--resume")
    assert list_checkpoints(run)[-1].name == f"step-{step:06d}" and untimed(run)[-1]["step"] == step
    assert main(["train", str(recipe), "--output_dir", str(run), "--no-progress", "--resume"]) == 0
    assert_same_run(run, uninterrupted)


@pytest.mark.integration
def test_kill_9_at_random_points_then_resume(recipe, uninterrupted, tmp_path):
    assert kill_and_resume(recipe, tmp_path / "run", kills=2, seed=0) == 2
    assert_same_run(tmp_path / "run", uninterrupted)


@pytest.mark.slow
def test_twenty_kill_9s_at_random_points_then_resume(recipe, uninterrupted, tmp_path):
    assert kill_and_resume(recipe, tmp_path / "run", kills=20, seed=1) == 20
    assert_same_run(tmp_path / "run", uninterrupted)


def kill_and_resume(recipe: Path, run: Path, kills: int, seed: int) -> int:
    """Start the run, SIGKILL it after a random delay (from start-up to mid-step), resume; repeat `kills` times,
    then let the last resume finish. Returns the number of kills made."""
    rng, made = random.Random(seed), 0
    while made < kills:
        process = start(recipe, run, *(["--resume"] if run.exists() else []))
        time.sleep(rng.uniform(2.0, 7.0))  # model loading takes ~3 s here: some kills land before any step
        if process.poll() is not None:  # finished before the kill: start over to keep killing
            assert process.returncode == 0, process.communicate()[1][-2000:]
            shutil.rmtree(run)
            continue
        process.kill()
        process.communicate()
        made += 1
    process = start(recipe, run, *(["--resume"] if run.exists() else []))
    _, err = process.communicate(timeout=300)
    assert process.returncode == 0, err[-2000:]
    return made


# --- the run lock --------------------------------------------------------------------------------------------------

@pytest.mark.integration
def test_a_second_run_on_a_directory_in_use_is_refused(recipe, tmp_path, capsys):
    run = tmp_path / "busy"
    run.mkdir()
    holder = FileLock(str(run / ".lock"))
    holder.acquire()  # another run holds it (this process stands in for it)
    (run / ".lock.holder").write_text(json.dumps({"pid": 4242, "host": "node-7"}))
    try:
        started = time.monotonic()
        assert main(["train", str(recipe), "--output_dir", str(run), "--no-progress"]) == 2
        assert time.monotonic() - started < 60  # refused at once, not after a run
    finally:
        holder.release()
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "in use by another run (pid 4242 on host node-7)" in err  # before any loading
    assert not (run / "metrics.jsonl").exists() and not (run / "config.yaml").exists()


@pytest.mark.integration
def test_a_stale_lock_of_a_killed_run_is_taken_over(recipe, tmp_path):
    run = tmp_path / "stale"
    run.mkdir()
    (run / ".lock").write_text("")  # a lock file nobody holds: its process died
    (run / ".lock.holder").write_text(json.dumps({"pid": 999999, "host": socket.gethostname()}))
    assert main(["train", str(recipe), "--output_dir", str(run), "--no-progress", "--max_steps", "1"]) == 0
    assert json.loads((run / ".lock.holder").read_text())["pid"] == os.getpid()


@pytest.mark.slow
def test_two_real_runs_on_one_directory(recipe, tmp_path):
    """The issue's reproduction: the second run (another seed) fails at once; the first finishes untouched."""
    run = tmp_path / "shared"
    first = start(recipe, run, "--max_steps", "60")  # long enough to still hold the lock while the second starts
    wait_for(lambda: (run / ".lock.holder").is_file(), what="the first run's lock")
    second = start(recipe, run, "--seed", "2")
    _, err = second.communicate(timeout=120)
    assert second.returncode == 2 and f"pid {first.pid}" in err and err.count("\n") == 1
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert [r["step"] for r in untimed(run)] == list(range(61))
    assert yaml.safe_load((run / "config.yaml").read_text())["seed"] == 1


# --- validation before the first write ---------------------------------------------------------------------------

@pytest.mark.parametrize("override, message", [
    (["--es.fitness", "bogus"], "es.fitness must be one of"),
    (["--generation.temperature", "-0.5"], "temperature must be >= 0"),
    (["--generation.top_p", "0"], "top_p must be in (0, 1]"),
    (["--es.lr", ".nan"], "es.lr must be a finite number"),
    (["--es.lr", ".inf"], "es.lr must be a finite number"),
    (["--es.weight_decay", ".nan"], "es.weight_decay must be a finite number"),
    (["--es.weight_decay", ".inf"], "es.weight_decay must be a finite number"),
    (["--es.sigma", ".inf"], "es.sigma must be a finite number"),
    (["--es.sigma", "1e9"], "es.sigma must be in (0, 1]"),
    (["--generation.temperature", ".nan"], "generation.temperature must be a finite number"),
    (["--rewards", "[no_such_module:fn]"], "cannot import no_such_module"),
    (["--rewards", "['toy_rewards:no_such_reward']"], "has no attribute 'no_such_reward'"),
    (["--data.task", "null", "--data.data_path", "MISSING.jsonl"], "MISSING.jsonl does not exist"),
    (["--es.target_modules", "'(unclosed'"], "is not a valid regular expression"),
    (["--max_steps", "'10'"], "max_steps must be an int, got '10'"),
    (["--resume"], "no such run directory; check the path"),
    (["--model.name", "./nothere"], "model folder ./nothere does not exist"),
    (["--data.task", "null", "--data.data_path", "sub/x.jsonl"], "data path sub/x.jsonl does not exist"),
    (["--rewards", "[toy_rewards:NOT_CALLABLE]"], "is an int, not a function"),
])
def test_bad_values_fail_in_one_line_before_anything_is_written(recipe, tmp_path, capsys, override, message):
    run = tmp_path / "run"
    code = main(["train", str(recipe), "--output_dir", str(run), *override])
    err = capsys.readouterr().err
    assert code == 2 and len(error_lines(err)) == 1 and "Traceback" not in err, err
    assert message in err
    assert not run.exists()


@pytest.mark.parametrize("content, message", [
    ('{"question": "q \\ud800", "answer": "#### 1"}\n', "train.jsonl:1: holds a lone surrogate escape"),
])
def test_bad_data_files_fail_in_one_line_before_anything_is_written(recipe, tmp_path, capsys, content, message):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text(content)
    run = tmp_path / "run"
    code = main(["train", str(recipe), "--output_dir", str(run), "--data.task", "gsm8k",
                 "--data.data_path", str(tmp_path / "data")])
    err = capsys.readouterr().err
    assert code == 2 and len(error_lines(err)) == 1 and "Traceback" not in err, err
    assert message in err and not run.exists()


def test_a_full_disk_at_a_checkpoint_is_one_line_and_leaves_the_previous_checkpoint(recipe, tmp_path, capsys,
                                                                                     monkeypatch):
    saves = []

    def save_file(tensors, path):  # the first checkpoint is written; the second finds the disk full (as safetensors
        saves.append(path)         # reports it: its own error type, the OS error inside the message)
        if len(saves) > 1:
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        return real_save(tensors, path)

    real_save = checkpoint.save_file
    monkeypatch.setattr(checkpoint, "save_file", save_file)
    run = tmp_path / "run"
    code = main(["train", str(recipe), "--output_dir", str(run), "--no-progress", "--max_steps", "2"])
    err = capsys.readouterr().err
    assert code == 2 and len(error_lines(err)) == 1 and "Traceback" not in err, err
    assert "could not write the checkpoint of step 2" in err and "No space left on device" in err
    assert "continue with --resume" in err
    assert [p.name for p in list_checkpoints(run)] == ["step-000001"]
    assert not list((run / "checkpoints").glob(".*.tmp"))  # no half-written checkpoint left


def test_a_read_only_run_directory_is_refused_in_one_line_before_loading(recipe, tmp_path, capsys, monkeypatch):
    real_access = os.access
    read_only = tmp_path / "ro"
    read_only.mkdir()
    # a read-only mount needs root to make; os.access answers for it as it would there
    monkeypatch.setattr(rundir.os, "access", lambda path, mode: (Path(path) != read_only and real_access(path, mode)))
    monkeypatch.setattr(rundir, "_read_only", lambda folder: True)
    code = main(["train", str(recipe), "--output_dir", str(read_only / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and len(error_lines(err)) == 1 and "Traceback" not in err and "%|" not in err, err
    assert f"cannot write run directory {read_only / 'run'} (Read-only file system" in err
    assert not (read_only / "run").exists()


@pytest.mark.parametrize("reward, message", [
    ("scalar_reward", "returned float 0.5, not a list"),
    ("none_reward", "returned NoneType None, not a list"),
])
def test_a_reward_that_returns_no_list_fails_in_one_line_without_a_checkpoint(recipe, tmp_path, capsys, reward,
                                                                              message):
    run = tmp_path / "run"
    code = main(["train", str(recipe), "--output_dir", str(run), "--no-progress",
                 "--rewards", f"[toy_rewards:{reward}]"])
    err = capsys.readouterr().err
    assert code == 2 and len(error_lines(err)) == 1 and "Traceback" not in err, err
    assert message in err and not list_checkpoints(run)


@pytest.mark.integration
def test_no_progress_shows_no_bar_at_all(recipe, tmp_path):
    """--no-progress hides the libraries' bars too (transformers' "Loading weights", datasets' "Map")."""
    done = subprocess.run([sys.executable, "-m", "eggroll_llm.cli", "train", str(recipe), "--output_dir",
                           str(tmp_path / "run"), "--no-progress", "--max_steps", "1"], env=env(),
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "%|" not in done.stderr and "Loading weights" not in done.stderr, done.stderr[-2000:]
    assert "finished 1 of 1 steps; run written to" in done.stdout


def test_a_run_that_failed_before_its_first_checkpoint_may_be_rerun(recipe, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--output_dir", str(run), "--rewards", "['toy_rewards:nan_reward']"]) == 2
    assert not list_checkpoints(run)
    assert main(["train", str(recipe), "--output_dir", str(run), "--no-progress", "--max_steps", "1"]) == 0


@pytest.mark.integration
def test_a_prompt_longer_than_the_context_is_refused_in_seconds_or_truncated(tmp_path, capsys):
    rows = [{"prompt": "Count: " + "one two three " * (4000 if i == 3 else 1)} for i in range(8)]
    data = tmp_path / "own"
    data.mkdir()
    (data / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (data / "validation.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:2]))
    recipe = tmp_path / "long.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "max_steps": 1, "rewards": ["toy_rewards:length_reward"],
                                      "data": {"task": None, "data_path": str(data), "eval_limit": 2}}))
    started = time.monotonic()
    assert main(["train", str(recipe), "--output_dir", str(tmp_path / "run")]) == 2
    assert time.monotonic() - started < 60
    err = capsys.readouterr().err
    (line,) = error_lines(err)
    assert re.search(r"train_dataset, row 4: the prompt has [\d,]{6,} tokens, over the 488", line)
    assert "data.long_prompts: truncate" in line
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
    with pytest.warns(UserWarning, match="train_dataset: 1 prompts are longer than the 488 tokens"):
        assert main(["train", str(recipe), "--output_dir", str(tmp_path / "cut"), "--no-progress",
                     "--data.long_prompts", "truncate"]) == 0


# --- resume, logs and temporary files ----------------------------------------------------------------------------

@pytest.mark.integration
def test_resume_matches_the_run_by_place_not_by_text(recipe, uninterrupted, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # stops at eval steps (eval_every 2): a run evaluates where it stops, and so does the uninterrupted one there
    assert main(["train", str(recipe), "--output_dir", "relrun", "--no-progress", "--max_steps", "2"]) == 0
    assert main(["train", str(recipe), "--output_dir", "./relrun", "--no-progress", "--resume",
                 "--max_steps", "4"]) == 0
    shutil.copytree(tmp_path / "relrun", tmp_path / "moved")  # a copied (or moved) run resumes too
    assert main(["train", str(recipe), "--output_dir", str(tmp_path / "moved"), "--no-progress", "--resume"]) == 0
    assert_same_run(tmp_path / "moved", uninterrupted)


@pytest.mark.integration
def test_a_torn_metrics_line_is_dropped_with_a_warning(recipe, uninterrupted, tmp_path, capsys):
    run = tmp_path / "torn"
    assert main(["train", str(recipe), "--output_dir", str(run), "--no-progress", "--max_steps", "4"]) == 0
    with (run / "metrics.jsonl").open("a") as handle:
        handle.write('{"step": 5, "wall_s": 1.')  # a kill in the middle of writing a record
    with pytest.warns(UserWarning, match=f"{run / 'metrics.jsonl'}:6: dropping a torn last line"):
        assert main(["export", str(run), "--out", str(tmp_path / "export")]) == 0
    assert main(["train", str(recipe), "--output_dir", str(run), "--no-progress", "--resume"]) == 0
    assert_same_run(run, uninterrupted)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join([*lines[:2], "{torn", *lines[2:]]) + "\n")
    assert main(["compare", str(run), str(uninterrupted), "--out", str(tmp_path / "cmp")]) == 2
    assert f"{run / 'metrics.jsonl'}:3: not JSON" in capsys.readouterr().err


@pytest.mark.integration
def test_temporary_leftovers_of_a_killed_run_are_cleaned_at_the_next_start(recipe, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(recipe), "--output_dir", str(run), "--no-progress", "--max_steps", "1"]) == 0
    leftovers = [run / "checkpoints" / ".step-000002.x1y2.tmp", run / ".adapter.old.tmp"]
    for folder in leftovers:
        folder.mkdir()
        (folder / "state.safetensors").write_bytes(b"half")
    (run / ".metrics.jsonl.abc.tmp").write_text("{")
    assert main(["train", str(recipe), "--output_dir", str(run), "--no-progress", "--resume", "--max_steps", "2"]) == 0
    assert not list(run.rglob("*.tmp"))
    assert [r["step"] for r in untimed(run)] == [0, 1, 2]


@pytest.mark.integration
def test_a_grpo_run_stops_on_sigint_at_a_saved_step_and_resumes(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    from eggroll_llm import tiny_arith

    for split, n in (("train", 32), ("validation", 2)):
        rows = tiny_arith.make_split(split, n, seed=0)
        (data / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    recipe = tmp_path / "grpo.yaml"
    recipe.write_text(yaml.safe_dump({
        "method": "grpo", "seed": 0, "max_steps": 8, "eval_every": 4, "save_every": 4,
        "rewards": ["toy_rewards:parity_reward"], "data": {"task": "gsm8k", "data_path": str(data), "eval_limit": 2},
        "generation": {"max_new_tokens": 8},
        "grpo": {"prompts_per_step": 2, "num_generations": 2, "lora_rank": 4, "learning_rate": 1e-2}}))
    run = tmp_path / "run"
    process = start(recipe, run)
    wait_for(lambda: steps_logged(run) >= 2 or process.poll() is not None, what="GRPO step 1")
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and "Traceback" not in err, err[-2000:]
    line = next(line for line in err.splitlines() if line.startswith("interrupted at step"))
    step = int(line.split()[3].rstrip(";"))
    assert (run / "checkpoints" / f"checkpoint-{step}").is_dir()  # saved at the step it stopped, off save_every
    assert [r["step"] for r in MetricsLog(run / "metrics.jsonl").read()] == list(range(step + 1))
    assert main(["train", str(recipe), "--output_dir", str(run), "--no-progress", "--resume"]) == 0
    assert [r["step"] for r in MetricsLog(run / "metrics.jsonl").read()] == list(range(9))
