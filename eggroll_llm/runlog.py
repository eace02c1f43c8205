"""The run directory's metrics log: one flat JSON object per step, the same keys for EGGROLL and GRPO.

Keys every method writes (docs/design.md §7): step, wall_s, completions, tokens, prompt_tokens, reward_mean,
peak_mem_mb; on evaluation steps eval_reward, eval_n and, for datasets with gold answers, eval_accuracy /
eval_strict_accuracy; on step 0 model_params and trainable_params. Timing-dependent keys are listed in
TIMING_KEYS so determinism checks can ignore them.
"""

from __future__ import annotations

import importlib.util
import json
import resource
import sys
import time
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path

from .io import atomic_write_text

BUDGET_CLOCKS = {"wall": time.perf_counter, "process": time.process_time}  # config.budget_clock -> the clock
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
    tokens: int = 0          # generated tokens
    prompt_tokens: int = 0   # prompt tokens fed through the model (one per completion's prompt)

    @classmethod
    def from_dict(cls, values: dict) -> RunTotals:
        """Totals from a saved state or record (a key older runs did not record takes its default)."""
        return cls(**{f.name: values.get(f.name, f.default) for f in fields(cls)})

    def advance(self, seconds: float, completions: int, tokens: int, prompt_tokens: int = 0) -> RunTotals:
        """The totals after one more update that took `seconds` and generated `completions` / `tokens`."""
        return RunTotals(self.step + 1, self.wall_s + seconds, self.completions + completions, self.tokens + tokens,
                         self.prompt_tokens + prompt_tokens)

    def record(self) -> dict:
        """The budget keys of a metrics.jsonl record (one optimizer update per step for both methods)."""
        return {"step": self.step, "wall_s": round(self.wall_s, 3), "completions": self.completions,
                "tokens": self.tokens, "prompt_tokens": self.prompt_tokens, "updates": self.step}


@dataclass
class TrainerState:
    """What a trainer knows of its run after train(), as TRL's `trainer.state`: the per-step records of
    metrics.jsonl (`log_history`, resumed steps included) and the last step reached."""

    log_history: list[dict] = field(default_factory=list)
    global_step: int = 0


def trainer_state(log: MetricsLog) -> TrainerState:
    """A trainer's state from its run's log; empty when the log is unreadable (then the error that ended the run,
    not the log's, is the one to report)."""
    try:
        records = log.read()
    except ValueError:
        records = []
    return TrainerState(log_history=records, global_step=records[-1]["step"] if records else 0)


@dataclass(frozen=True)
class TrainOutput:
    """What train() returns, shaped like transformers' TrainOutput: the last step, the training loss (None for
    EGGROLL, which has no loss), the last record's metrics, plus the run directory and why the run stopped."""

    global_step: int
    training_loss: float | None
    metrics: dict
    run_dir: Path
    stopped_by: str  # "max_steps", or "max_wall_s" when the time budget ended the run first


def train_output(run_dir: Path, records: list[dict], max_steps: int, training_loss: float | None = None
                 ) -> TrainOutput:
    """The TrainOutput of a finished run from its records (the last holds the step reached)."""
    last = records[-1] if records else {"step": 0}
    stopped_by = "max_steps" if last["step"] >= max_steps else "max_wall_s"
    return TrainOutput(global_step=last["step"], training_loss=training_loss, metrics=dict(last),
                       run_dir=Path(run_dir), stopped_by=stopped_by)


def stop_note(output: TrainOutput, max_steps: int, max_wall_s: float | None) -> str:
    """One line on how a run ended: at max_steps, or earlier because its time budget was spent."""
    if output.stopped_by == "max_steps":
        return f"finished {output.global_step} of {max_steps} steps"
    return (f"stopped at step {output.global_step} of {max_steps}: the max_wall_s budget of {max_wall_s:g} s of "
            f"training was spent ({output.metrics.get('wall_s', 0):g} s); to go on, --resume with a larger "
            "--max_wall_s")


class MetricsLog:
    """Appends one JSON line per record to metrics.jsonl, and hands each record to the `report_to` trackers.

    On resume, records past the checkpoint's step are dropped. Only numbers go to the trackers (step as the x axis).
    """

    def __init__(self, path: str | Path, trackers: list | None = None):
        self.path = Path(path)
        self.trackers = trackers or []

    def read(self) -> list[dict]:
        """The records. A torn last line (a run killed mid-write) is dropped with a warning naming file:line; a bad
        line before it means the log is damaged: ValueError naming file:line."""
        if not self.path.is_file():
            return []
        lines = self.path.read_text().splitlines()
        records = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                if any(rest.strip() for rest in lines[number:]):
                    raise ValueError(f"{self.path}:{number}: not JSON ({err.msg}); the run's log is damaged: fix or "
                                     "remove that line") from None
                warnings.warn(f"{self.path}:{number}: dropping a torn last line (the run stopped while writing it)",
                              stacklevel=2)
        return records

    def truncate_after(self, step: int) -> None:
        kept = [r for r in self.read() if r["step"] <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))

    def log(self, record: dict) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.log(numbers, record["step"])

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()


def report_targets(report_to: str | list[str]) -> list[str]:
    """The trackers `report_to` asks for: "all" means those installed; a named one that is missing is an error."""
    wanted = [report_to] if isinstance(report_to, str) else list(report_to)
    if "all" in wanted:
        return [name for name in ("tensorboard", "wandb") if importlib.util.find_spec(name) is not None]
    missing = [name for name in wanted if name != "none" and importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"report_to names {missing[0]}, which is not installed; pip install {missing[0]} or drop it "
                         "from report_to")
    return [name for name in wanted if name != "none"]


class _TensorBoard:
    def __init__(self, run_dir: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))

    def log(self, numbers: dict, step: int) -> None:
        for key, value in numbers.items():
            if key != "step":
                self.writer.add_scalar(key, value, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class _WandB:
    def __init__(self, run_dir: Path, config: dict):
        import wandb

        # project and entity come from wandb's own settings (WANDB_PROJECT, WANDB_ENTITY, `wandb login`)
        self.run = wandb.init(name=run_dir.name, config=config, dir=str(run_dir), resume="allow")

    def log(self, numbers: dict, step: int) -> None:
        self.run.log(numbers, step=step)

    def close(self) -> None:
        self.run.finish()


def open_trackers(report_to: str | list[str], run_dir: Path, config: dict) -> list:
    """Trackers for `report_to` (see report_targets), writing beside metrics.jsonl: tensorboard/ in the run dir."""
    kinds = {"tensorboard": _TensorBoard, "wandb": _WandB}
    return [kinds[name](Path(run_dir), config) for name in report_targets(report_to)]
