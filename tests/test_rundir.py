"""rundir.py: what may start or resume in a run directory, decided before anything is written."""

import os

import pytest
import yaml
from filelock import FileLock

from eggroll_llm import rundir
from eggroll_llm.config import DryRun, EggrollConfig, flatten, to_dict
from eggroll_llm.io import WriteError
from eggroll_llm.rundir import (
    RunDirBusy,
    changed_keys,
    check_recipe_can_resume,
    check_resumable,
    check_writable,
    prepare_run_dir,
    recorded_dry_run,
    remove_stale_temporaries,
)


def config(run, **top) -> EggrollConfig:
    return EggrollConfig(output_dir=str(run), **top)


def test_a_fresh_run_writes_its_config_and_a_resume_must_keep_the_recipe(tmp_path):
    run = tmp_path / "run"
    folder, lock = prepare_run_dir(config(run, seed=3), resume=False)
    lock.release()
    assert yaml.safe_load((folder / "config.yaml").read_text()) == to_dict(config(run, seed=3))
    (run / "checkpoints" / "step-000001").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="already holds a run; pass --resume"):
        prepare_run_dir(config(run, seed=3), resume=False)
    with pytest.raises(ValueError, match=r"different recipe \(seed: 3 → 4\)"):
        prepare_run_dir(config(run, seed=4), resume=True)
    # run-only keys may change on resume: how far, where and how the run goes
    _, lock = prepare_run_dir(config(run, seed=3, max_steps=500, disable_tqdm=True, model={"device": "cpu"}),
                              resume=True)
    lock.release()


def test_changed_keys_skip_run_only_keys_and_only_warn_for_a_dataset_fingerprint(tmp_path):
    saved = to_dict(config(tmp_path / "a", data={"train_dataset": {"fingerprint": "f1", "num_rows": 4,
                                                                   "columns": ["prompt"]}, "task": None}))
    now = config(tmp_path / "b", max_steps=7, model={"device": "cpu"},
                 data={"train_dataset": {"fingerprint": "f2", "num_rows": 4, "columns": ["prompt"]}, "task": None})
    with pytest.warns(UserWarning, match="data.train_dataset.fingerprint changed since the run started"):
        assert changed_keys(saved, now) == []
    assert changed_keys(saved, config(tmp_path / "a", es={"sigma": 0.5}, data={"task": None, "train_dataset": {
        "fingerprint": "f1", "num_rows": 4, "columns": ["prompt"]}})) == ["es.sigma: 0.02 → 0.5"]


def test_a_busy_directory_is_refused_with_its_holder(tmp_path):
    run = tmp_path / "busy"
    run.mkdir()
    (run / rundir.HOLDER_FILE).write_text('{"pid": 4242, "host": "elsewhere"}')
    held = FileLock(str(run / rundir.LOCK_FILE))
    held.acquire()
    try:
        with pytest.raises(RunDirBusy, match="in use by another run \\(pid 4242 on host elsewhere\\)"):
            rundir.refuse_if_busy(run)
    finally:
        held.release()
    rundir.refuse_if_busy(run)  # released: a stale lock file is no obstacle


def test_resume_needs_the_directory_and_a_recipe_cannot_resume_a_run_of_objects(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such run directory"):
        check_resumable(tmp_path / "typo", resume=True)
    check_resumable(tmp_path / "typo", resume=False)
    run = tmp_path / "api"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"train_dataset": {"num_rows": 16,
                                                                                "fingerprint": "abc"}}}))
    with pytest.raises(ValueError, match="a dataset given as a Python object \\(16 rows, fingerprint abc\\)"):
        check_recipe_can_resume(run)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {}, "rewards": ["__main__:f (not importable)"]}))
    with pytest.raises(ValueError, match="its reward __main__:f \\(not importable\\) cannot be imported"):
        check_recipe_can_resume(run)
    (run / "config.yaml").write_text(yaml.safe_dump({"data": {"task": "gsm8k"}, "rewards": ["gsm8k"]}))
    check_recipe_can_resume(run)


def test_an_unwritable_directory_is_refused_before_anything_is_made(tmp_path, monkeypatch):
    real_access = os.access
    monkeypatch.setattr(rundir.os, "access", lambda path, mode: str(path) != str(tmp_path) and real_access(path, mode))
    monkeypatch.setattr(rundir, "_read_only", lambda folder: False)
    with pytest.raises(WriteError, match="cannot write run directory .*new/run \\(Permission denied at"):
        check_writable(tmp_path / "new" / "run")
    assert not (tmp_path / "new").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(WriteError, match="is a file"):
        check_writable(tmp_path / "file" / "run")


def test_stale_temporaries_are_removed_and_nothing_else(tmp_path):
    (tmp_path / ".config.yaml.abc.tmp").write_text("half")
    (tmp_path / "checkpoints" / ".step-000002.x.tmp").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-000001").mkdir()
    (tmp_path / "notes.tmp").write_text("mine")  # not a dot-file: not ours
    remove_stale_temporaries(tmp_path)
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == [
        "checkpoints", "checkpoints/step-000001", "notes.tmp"]


def test_a_dry_run_is_recorded_beside_the_recipe_and_resumes_only_as_one(tmp_path):
    """config.yaml holds the recipe alone; how a dry run loaded its model goes to dry_run.json."""
    run = tmp_path / "run"
    _, lock = prepare_run_dir(config(run), resume=False, dry_run=DryRun("tiny"))
    lock.release()
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert not any("dry_run" in key for key in flatten(saved)) and saved == to_dict(config(run))
    assert recorded_dry_run(run) == DryRun("tiny")
    with pytest.raises(ValueError, match="cannot resume .* without --dry_run: it started with --dry_run tiny"):
        prepare_run_dir(config(run), resume=True)
    with pytest.raises(ValueError, match="with --dry_run full: it started with --dry_run tiny"):
        prepare_run_dir(config(run), resume=True, dry_run=DryRun("full"))
    _, lock = prepare_run_dir(config(run), resume=True, dry_run=DryRun("tiny"))
    lock.release()
    _, lock = prepare_run_dir(config(run), resume=False)  # no checkpoint yet: a plain rerun is a real run
    lock.release()
    assert recorded_dry_run(run) is None


def test_a_run_of_an_earlier_release_with_dry_run_flags_in_config_yaml_resumes(tmp_path):
    run = tmp_path / "old"
    run.mkdir()
    old = to_dict(config(run, seed=2))
    old["model"].update(dry_run_random_init=True, dry_run_shrink=True)
    (run / "config.yaml").write_text(yaml.safe_dump(old))
    assert recorded_dry_run(run) == DryRun("tiny")
    assert changed_keys(old, config(run, seed=2)) == []  # the old flags are not a change of recipe
    _, lock = prepare_run_dir(config(run, seed=2), resume=True, dry_run=DryRun("tiny"))
    lock.release()
    assert "dry_run_shrink" not in (run / "config.yaml").read_text() and recorded_dry_run(run) == DryRun("tiny")


def test_a_resume_ignores_the_other_methods_section(tmp_path):
    """A recipe may carry both methods' sections; an EGGROLL run records its grpo: section at the defaults, and a
    config.yaml that recorded another grpo: section resumes all the same (it never trained with it)."""
    saved = to_dict(config(tmp_path / "a"))
    saved["grpo"]["num_generations"] = 16
    assert changed_keys(saved, config(tmp_path / "a")) == []
    saved["es"]["sigma"] = 0.5
    assert changed_keys(saved, config(tmp_path / "a")) == ["es.sigma: 0.5 → 0.02"]
