"""The run directory both trainers write: config.yaml, metrics.jsonl, eval/, checkpoints/, adapter/ (or model/).

`prepare_run_dir` decides, before anything is written, whether a run may start here:
- a lock (`.lock`, held with `filelock` for the whole run) refuses a second run or resume on a directory in use,
  naming the holder's pid and host; the OS releases the lock of a killed run, so a stale lock is simply taken over;
- a folder that holds a checkpoint is refused unless the run is resumed; one that failed before its first checkpoint
  may be reused by a plain rerun;
- a resume must use the recipe the run started with: keys that only say how far or how a run goes
  (config.RUN_ONLY_KEYS, output_dir among them, so moved and copied runs resume) may change; each other change is
  listed with its two values; a dry run (dry_run.json, beside config.yaml) resumes only as the same dry run;
- temporary files and folders left by a killed run (`.*.tmp`, see io.py) are removed.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import warnings
from pathlib import Path

import yaml
from filelock import FileLock, Timeout

from .config import DryRun, RunArgs, flatten, is_run_only, other_methods_keys, to_dict, upgrade
from .io import WRITE_FIXES, WriteError, atomic_write_text
from .rewards import NOT_IMPORTABLE

LOCK_FILE, HOLDER_FILE = ".lock", ".lock.holder"
DRY_RUN_FILE = "dry_run.json"  # how a dry run loaded its model (config.DryRun): not part of the recipe


class RunDirBusy(ValueError):
    """Another process holds the run directory's lock."""


def changed_keys(saved: dict, config: RunArgs) -> list[str]:
    """`key: saved → now` for every recipe key (run-only keys and the other method's section aside) where `config`
    differs from a saved config.

    A dataset fingerprint that changed only warns: datasets gives data mapped with an unhashable function a new
    fingerprint each time, so the same rows can come back under another one."""
    before, now = flatten(upgrade(saved)), flatten(to_dict(config))
    differ = [key for key in sorted(set(before) | set(now)) if not is_run_only(key) and before.get(key) != now.get(key)
              and not other_methods_keys(config.method, key)]  # the other method's section: not what this run trains
    for key in [k for k in differ if k.endswith(".fingerprint")]:
        warnings.warn(f"{key} changed since the run started ({before.get(key)} → {now.get(key)}); resuming with the "
                      "dataset as given (same rows and columns)", stacklevel=2)
    return [f"{key}: {before.get(key)!r} → {now.get(key)!r}" for key in differ if not key.endswith(".fingerprint")]


def check_recipe_can_resume(run_dir: Path) -> None:
    """Refuse resuming from a recipe a run that trained on Python objects: datasets given as objects (config.yaml
    holds their description, not a task) or reward functions that cannot be imported by name."""
    path = Path(run_dir) / "config.yaml"
    saved = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    data = saved.get("data") or {}
    if data.get("train_dataset"):
        described = data["train_dataset"]
        raise ValueError(f"cannot resume {run_dir} from a recipe: it trained on a dataset given as a Python object "
                         f"({described.get('num_rows')} rows, fingerprint {described.get('fingerprint')}), which no "
                         "recipe can rebuild; resume it from Python with the same datasets: "
                         "trainer.train(resume_from_checkpoint=True)")
    hidden = [name for name in saved.get("rewards") or [] if str(name).endswith(NOT_IMPORTABLE)]
    if hidden:
        raise ValueError(f"cannot resume {run_dir} from a recipe: its reward {hidden[0]} cannot be imported by name; "
                         "resume it from Python with the same reward functions: "
                         "trainer.train(resume_from_checkpoint=True)")


def has_checkpoint(run_dir: Path) -> bool:
    """Whether a run saved a resumable state here (EGGROLL's step-N or TRL's checkpoint-N folders)."""
    folder = Path(run_dir) / "checkpoints"
    return folder.is_dir() and any(p.is_dir() and not p.name.startswith(".") for p in folder.iterdir())


def _acquire(run_dir: Path) -> FileLock:
    lock = FileLock(str(run_dir / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        holder = _read_holder(run_dir)
        raise RunDirBusy(f"{run_dir} is in use by another run (pid {holder.get('pid', '?')} on host "
                         f"{holder.get('host', '?')}); wait for it to finish, stop it, or choose another "
                         "output_dir") from None
    return lock


def lock_run_dir(run_dir: Path) -> FileLock:
    """Hold the run directory's lock (released when the process ends, however it ends); refuse a busy one."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = _acquire(run_dir)
    atomic_write_text(run_dir / HOLDER_FILE, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
    return lock


def refuse_if_busy(run_dir: Path) -> None:
    """Fail at once (before any model is loaded) when another run holds the directory's lock; writes nothing.

    The lock itself is taken later, by prepare_run_dir: this early look only spares a doomed start-up."""
    if (Path(run_dir) / LOCK_FILE).is_file():
        _acquire(Path(run_dir)).release()


def check_resumable(run_dir: Path, resume: bool) -> None:
    """A resume needs its run directory: a mistyped path is refused instead of silently starting a new run there.
    (A folder that exists but holds no checkpoint yet, a run killed while it started, resumes from the start.)"""
    if resume and not Path(run_dir).is_dir():
        raise FileNotFoundError(f"cannot resume {run_dir}: no such run directory; check the path (a run resumes from "
                                "its output_dir), or drop --resume to start a new run there")


def check_writable(run_dir: Path) -> None:
    """Refuse, before anything is loaded or written, a run directory this process cannot write (a read-only file
    system, no permission): the nearest existing folder at or above it must be writable."""
    folder = Path(run_dir).absolute()
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        raise WriteError(f"cannot make run directory {run_dir}: {folder} is a file; choose another output_dir")
    if not os.access(folder, os.W_OK | os.X_OK):
        code = errno.EROFS if _read_only(folder) else errno.EACCES
        raise WriteError(f"cannot write run directory {run_dir} ({os.strerror(code)} at {folder}); "
                         f"{WRITE_FIXES[code]}")


def _read_only(folder: Path) -> bool:
    return bool(os.statvfs(folder).f_flag & os.ST_RDONLY)


def _read_holder(run_dir: Path) -> dict:
    try:
        return json.loads((run_dir / HOLDER_FILE).read_text())
    except (OSError, ValueError):
        return {}


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete `.NAME.*.tmp` files and folders that a killed run left (only call while holding the lock)."""
    for path in sorted(Path(run_dir).rglob(".*.tmp"), key=lambda p: len(p.parts), reverse=True):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def recorded_dry_run(run_dir: Path) -> DryRun | None:
    """The dry run a run directory was written by (None: a run of real weights). Runs of earlier releases recorded it
    in config.yaml's model section (dry_run_random_init, dry_run_shrink)."""
    path = Path(run_dir) / DRY_RUN_FILE
    if path.is_file():
        return DryRun(**json.loads(path.read_text()))
    saved = Path(run_dir) / "config.yaml"
    model = ((yaml.safe_load(saved.read_text()) or {}).get("model") or {}) if saved.is_file() else {}
    if model.get("dry_run_random_init"):
        return DryRun("tiny" if model.get("dry_run_shrink") else "full")
    return None


def _check_same_dry_run(run_dir: Path, dry_run: DryRun | None) -> None:
    before = recorded_dry_run(run_dir)
    if before != dry_run:
        said = {None: "without --dry_run"} | {d: f"with --dry_run {d.mode}" for d in (before, dry_run) if d}
        raise ValueError(f"cannot resume {run_dir} {said[dry_run]}: it started {said[before]}; resume it the way it "
                         "started")


def prepare_run_dir(config: RunArgs, resume: bool, write: bool = True,
                    dry_run: DryRun | None = None) -> tuple[Path, FileLock | None]:
    """The run directory of `config`, locked and checked for a fresh start or a resume; writes config.yaml (and for
    a `dry_run`, dry_run.json).

    With `write` False (the other processes of a distributed run) nothing is locked or written: (run_dir, None).
    """
    run_dir = Path(config.output_dir)
    check_resumable(run_dir, resume)
    if write:
        check_writable(run_dir)
    lock = lock_run_dir(run_dir) if write else None
    try:
        if resume and (run_dir / "config.yaml").is_file():
            changed = changed_keys(yaml.safe_load((run_dir / "config.yaml").read_text()) or {}, config)
            if changed:
                raise ValueError(f"cannot resume {run_dir} with a different recipe ({'; '.join(changed)}); resume "
                                 "with the recipe the run was started with")
            _check_same_dry_run(run_dir, dry_run)
        if not resume and has_checkpoint(run_dir):
            raise FileExistsError(f"{run_dir} already holds a run; pass --resume (resume_from_checkpoint=True) to "
                                  "continue it or choose another output_dir")
        if write:
            remove_stale_temporaries(run_dir)
            atomic_write_text(run_dir / "config.yaml", yaml.safe_dump(to_dict(config), sort_keys=False))
            if dry_run is not None:
                atomic_write_text(run_dir / DRY_RUN_FILE, json.dumps({"mode": dry_run.mode}))
            elif not resume:  # a plain rerun in a folder a dry run left before its first checkpoint
                (run_dir / DRY_RUN_FILE).unlink(missing_ok=True)
    except BaseException:
        if lock is not None:
            lock.release()
        raise
    return run_dir, lock
