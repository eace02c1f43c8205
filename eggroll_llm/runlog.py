"""The run directory's metrics log: one flat JSON object per step, the same keys for EGGROLL and GRPO.

Keys every method writes (DESIGN.md §7): step, wall_s, completions, tokens, reward_mean, peak_mem_mb, and
eval_accuracy / eval_strict_accuracy / eval_n on evaluation steps. Timing-dependent keys are listed in
TIMING_KEYS so determinism checks can ignore them.
"""

from __future__ import annotations

import json
import resource
import sys
from dataclasses import dataclass, fields
from pathlib import Path

from .io import atomic_write_text

TIMING_KEYS = frozenset({"wall_s", "tokens_per_s", "peak_mem_mb", "step_s", "eval_s"})


def peak_memory_mb(device) -> float:
    """Peak accelerator memory allocated on `device`, or peak resident memory of this process on CPU."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


@dataclass(frozen=True)
class RunTotals:
    """A run's cumulative budget after `step` updates, the same for EGGROLL and GRPO; restored on resume."""

    step: int = 0
    wall_s: float = 0.0      # training time, evaluation excluded
    completions: int = 0
    tokens: int = 0

    @classmethod
    def from_dict(cls, values: dict) -> RunTotals:
        return cls(**{f.name: values[f.name] for f in fields(cls)})

    def advance(self, seconds: float, completions: int, tokens: int) -> RunTotals:
        """The totals after one more update that took `seconds` and generated `completions` / `tokens`."""
        return RunTotals(self.step + 1, self.wall_s + seconds, self.completions + completions, self.tokens + tokens)

    def record(self) -> dict:
        """The budget keys of a metrics.jsonl record (one optimizer update per step for both methods)."""
        return {"step": self.step, "wall_s": round(self.wall_s, 3), "completions": self.completions,
                "tokens": self.tokens, "updates": self.step}


class MetricsLog:
    """Appends one JSON line per record to metrics.jsonl; on resume, drops records past the checkpoint's step."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def truncate_after(self, step: int) -> None:
        kept = [r for r in self.read() if r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, record: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
