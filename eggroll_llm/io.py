"""Atomic file and folder writes: a crash or a bad input never leaves a half-written output behind; and the one rule
for replacing an output folder (`check_output_folder`), shared by `export` and `compare`."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path


def _default_mode() -> int:
    """The mode a plain open() would give a new file (mkstemp's 0600 would make shared reports private)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_file(path: str | Path):
    """Yield a temporary sibling path to write; on success it is renamed over `path` (atomic on POSIX)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(text)


@contextmanager
def atomic_directory(path: str | Path, *, overwrite: bool = False):
    """Yield a temporary folder beside `path`; on success it replaces `path`, on error it is removed.

    `overwrite=False` refuses an existing `path` before any work starts.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; choose another folder or pass --force to replace it")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    os.chmod(tmp, _default_mode() | 0o111)  # a folder needs x to be entered
    try:
        yield tmp
        for item in tmp.rglob("*"):  # libraries (safetensors, mkstemp) create 0600 files; give them plain modes
            os.chmod(item, _default_mode() | (0o111 if item.is_dir() else 0))
        if path.exists():
            old = path.with_name(f".{path.name}.old.tmp")  # .tmp: a kill between the renames leaves it to clean up
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


RUN_DIR_MARKERS = ("config.yaml", "metrics.jsonl")  # what every run directory holds (rundir.py writes them)


def is_run_dir(folder: Path) -> bool:
    """Whether `folder` is a run directory written by `eggroll-llm train`."""
    return all((Path(folder) / name).is_file() for name in RUN_DIR_MARKERS)


class OutputFolderError(ValueError):
    """An output folder that writing or replacing could lose data in; the message names it and the fix."""


def check_output_folder(out: Path, *, kind: str, markers: tuple[str, ...], protected: list[Path], force: bool,
                        error: type[ValueError] = OutputFolderError) -> None:
    """Refuse `out` before any work when replacing it could lose data.

    Refused: the working directory or a folder above it; a protected folder (the runs named), any run directory,
    anything inside one or holding one; an existing folder that is not empty and lacks the `markers` files of a
    previous `kind`. A previous `kind` is replaced only with `force`. `error` is the ValueError subclass to raise.
    """
    target, cwd = Path(out).resolve(), Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise error(f"--out {out} is the working directory or a folder above it; choose a new folder")
    around = [folder for folder in (target, *target.parents) if is_run_dir(folder)]  # any run, not only those named
    for folder in [*protected, *around]:
        folder = Path(folder).resolve()
        if target == folder or folder in target.parents or target in folder.parents:
            raise error(f"--out {out} would overwrite run directory {folder} (it is the run, inside it or holds it); "
                        "choose a folder outside the runs")
    out = Path(out)
    if not out.exists() or (out.is_dir() and not any(out.iterdir())):
        return
    if not out.is_dir() or not all((out / name).is_file() for name in markers):
        raise error(f"--out {out} exists and is not a {kind} (no {' + '.join(markers)}); choose a new folder")
    if not force:
        raise error(f"--out {out} holds a previous {kind}; pass --force to replace it")
