"""EGG's byte corpus, its train/validation split, the text windows of every step, and the baselines.

No download: `--data FILE|DIR` takes any text, and the default is the running Python's standard-library source
(`sysconfig.get_paths()["stdlib"]`, every *.py outside site-packages), read at run time. A folder is split by file:
a file goes to validation when the first byte of blake2b(its relative path) is below 13 (about 5%), a fixed rule that
does not depend on the order files are listed in. One file is split by position (its last 5% is validation).
Documents are joined with a 0 byte before each; the model resets its state there.
"""

from __future__ import annotations

import hashlib
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

VALIDATION_BYTE = 13  # blake2b first byte < 13 of 256: about 5% of files
SEPARATOR = 0


class CorpusError(ValueError):
    """Unusable training text; the message names the path and the fix."""


@dataclass(frozen=True)
class Corpus:
    train: np.ndarray  # uint8 bytes, documents joined with SEPARATOR
    val: np.ndarray
    source: str
    train_files: int
    val_files: int


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _is_validation(relative: str) -> bool:
    return hashlib.blake2b(relative.encode()).digest()[0] < VALIDATION_BYTE


def _join(texts: list[bytes]) -> np.ndarray:
    joined = b"".join(bytes([SEPARATOR]) + t for t in texts)
    return np.frombuffer(joined, dtype=np.uint8).copy()


def _read_folder(root: Path, pattern: str, skip_parts: tuple[str, ...]) -> list[tuple[str, bytes]]:
    files = []
    for path in sorted(root.rglob(pattern)):
        relative = path.relative_to(root)
        if not path.is_file() or any(p.startswith(".") or p in skip_parts for p in relative.parts):
            continue
        data = path.read_bytes()
        if data and b"\x00" not in data:  # a NUL byte means binary (and would collide with the separator)
            files.append((relative.as_posix(), data))
    return files


def load_corpus(data: str | Path | None = None) -> Corpus:
    """Read the text (default: the standard library's .py files) and split it into train and validation."""
    if data is None:
        root = stdlib_dir()
        files = _read_folder(root, "*.py", ("site-packages", "dist-packages"))
        source = f"python-stdlib:{root}"
    else:
        root = Path(data)
        source = str(root)
        if not root.exists():
            raise CorpusError(f"--data {root} does not exist; give a text file or a folder of text files")
        if root.is_file():
            text = root.read_bytes().replace(b"\x00", b"")
            if len(text) < 2:
                raise CorpusError(f"--data {root} is empty; give a file with text in it")
            cut = len(text) - max(1, len(text) // 20)
            return Corpus(_join([text[:cut]]), _join([text[cut:]]), source, 1, 1)
        files = _read_folder(root, "*", ())
    if not files:
        raise CorpusError(f"no readable text files under {root}; give --data a text file or a folder of text files")
    val = [text for name, text in files if _is_validation(name)]
    train = [text for name, text in files if not _is_validation(name)]
    if not val or not train:  # too few files for the hash rule: the file with the smallest hash validates
        files.sort(key=lambda f: hashlib.blake2b(f[0].encode()).digest())
        if len(files) == 1:
            text = files[0][1]
            cut = len(text) - max(1, len(text) // 20)
            return Corpus(_join([text[:cut]]), _join([text[cut:]]), source, 1, 1)
        val, train = [files[0][1]], [t for _, t in files[1:]]
    return Corpus(_join(train), _join(val), source, len(train), len(val))


def check_length(corpus: Corpus, seq_len: int, val_seq_len: int) -> None:
    """Refuse a split shorter than one window, naming the flag that sets that window."""
    for split, data, flag, length in (("train", corpus.train, "--seq_len", seq_len),
                                      ("validation", corpus.val, "--val_seq_len", val_seq_len)):
        if len(data) < length + 1:
            raise CorpusError(f"the {split} split of {corpus.source} has {len(data)} bytes, fewer than one window of "
                              f"{flag} {length} + 1; give more text or a smaller {flag}")


def train_windows(corpus: Corpus, seed: int, step: int, windows: int, seq_len: int) -> np.ndarray:
    """[windows, seq_len + 1] uint8 windows of the train split for `step`: a function of (seed, step) only, so a
    resumed run reads exactly the text an uninterrupted one would."""
    rng = np.random.default_rng([seed, step])
    starts = rng.integers(0, len(corpus.train) - seq_len, size=windows)
    return corpus.train[starts[:, None] + np.arange(seq_len + 1)]


def val_windows(corpus: Corpus, windows: int, seq_len: int) -> np.ndarray:
    """[w, seq_len + 1] evenly spaced windows of the validation split (fewer when it is short)."""
    span = len(corpus.val) - seq_len - 1
    windows = max(1, min(windows, span // seq_len + 1))
    starts = np.linspace(0, span, windows).astype(np.int64)
    return corpus.val[starts[:, None] + np.arange(seq_len + 1)]


def baselines(train: np.ndarray, windows: np.ndarray) -> dict[str, float]:
    """Bits per byte of simple predictors on exactly the targets the model is scored on (windows[:, 1:]).

    unigram and bigram: add-one (Laplace) counts from the train split; the bigram conditions on the previous byte
    of the window, as the model can. zlib: level-9 compressed size of the windows' target bytes.
    """
    context, target = windows[:, :-1].ravel().astype(np.int64), windows[:, 1:].ravel().astype(np.int64)
    unigram = np.bincount(train, minlength=256).astype(np.float64) + 1.0
    pairs = np.bincount(train[:-1].astype(np.int64) * 256 + train[1:], minlength=256 * 256)
    bigram = pairs.reshape(256, 256).astype(np.float64) + 1.0
    p_uni = unigram[target] / unigram.sum()
    p_bi = bigram[context, target] / bigram[context].sum(-1)
    text = windows[:, 1:].astype(np.uint8).tobytes()
    return {"uniform_bits_per_byte": 8.0,
            "unigram_bits_per_byte": float(-np.log2(p_uni).mean()),
            "bigram_bits_per_byte": float(-np.log2(p_bi).mean()),
            "zlib_bits_per_byte": 8.0 * len(zlib.compress(text, 9)) / len(text)}
