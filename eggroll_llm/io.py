"""Atomic file and folder writes: a crash or a bad input never leaves a half-written output behind; the one rule
for replacing an output folder (`check_output_folder`), shared by `export` and `compare`; and `writing`, which turns
a failed write (disk full, read-only file system, no permission) into one line naming what, where and the fix."""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError


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
        fsync_file(tmp)  # on disk before the rename: a power cut leaves the old file or the new, never an empty one
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data to the disk (the OS may otherwise hold it in memory past a power cut)."""
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


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


WRITE_FIXES = {
    errno.ENOSPC: "free space on that disk (or move the run to another with output_dir), then continue with --resume",
    errno.EDQUOT: "free space within your disk quota, then continue with --resume",
    errno.EROFS: "that file system is read-only; choose an output_dir on a writable disk",
    errno.EACCES: "you may not write there; fix the folder's permissions or choose another output_dir",
    errno.EPERM: "you may not write there; fix the folder's permissions or choose another output_dir",
}


class WriteError(OSError):
    """A write that failed for a reason outside the program (disk full, read-only, permissions); one line."""


@contextmanager
def writing(what: str, where: str | Path):
    """Run the enclosed writes; a failure of the disk (OSError, or safetensors' SafetensorError, which wraps one)
    becomes a WriteError naming `what`, `where`, the reason and the fix."""
    try:
        yield
    except WriteError:
        raise
    except (OSError, SafetensorError) as err:
        code = err.errno if isinstance(err, OSError) else _os_error_code(str(err))
        if code not in WRITE_FIXES:
            raise
        error = WriteError(f"could not write {what} to {where} ({os.strerror(code)}); {WRITE_FIXES[code]}")
        error.errno = code
        raise error from err


def _os_error_code(message: str) -> int | None:
    """The errno inside a safetensors message ('... No space left on device (os error 28)')."""
    found = re.search(r"os error (\d+)", message)
    return int(found.group(1)) if found else None
