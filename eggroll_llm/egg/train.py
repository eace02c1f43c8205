"""Pretraining EGG from scratch with integer EGGROLL: the loop, its settings, evaluation and checkpoints.

    eggroll-llm egg train --output_dir runs/egg --max_wall_s 1200

Each step, top to bottom: read N / group_size text windows (a function of seed and step) -> regenerate the int8
noise of every matrix -> one batched integer forward of all N members -> fitness = each member's integer
log2-likelihood of its window -> antithetic sign votes -> thresholded ±1 update (`qeggroll`). Every `eval_every`
steps the unperturbed model is scored on fixed validation windows; checkpoints are int8 safetensors.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..checkpoint import list_checkpoints, load_checkpoint, save_checkpoint
from ..io import atomic_write_text
from ..runlog import MetricsLog
from . import corpus, intops, qeggroll
from .model import EggConfig, forward, init_params, parameter_count


class EggTrainError(ValueError):
    """A training setting or run directory that cannot work; the message names it and the fix."""


@dataclass
class EggTrainConfig:
    """Settings of an EGG pretraining run (`eggroll-llm egg train --help` lists them as flags)."""

    output_dir: str = field(default="", metadata={"help": "run directory (metrics.jsonl, checkpoints/, config.json)"})
    seed: int = field(default=0, metadata={"help": "fixes the initial weights, the noise and the text windows"})
    data: str | None = field(default=None, metadata={"help": "text file or folder; default: the Python stdlib"})
    # Budget
    max_steps: int = field(default=1000, metadata={"help": "stop after this many updates"})
    max_wall_s: float | None = field(default=None, metadata={"help": "stop after this many seconds (evaluation "
                                                                        "included), whichever comes first"})
    # Population and data
    population_size: int = field(default=512, metadata={"help": "members per step N (even: antithetic pairs)"})
    group_size: int = field(default=2, metadata={"help": "members that read the same text window (even, divides N)"})
    seq_len: int = field(default=64, metadata={"help": "bytes each member predicts per step"})
    # Integer EGGROLL
    sigma_shift: int = field(default=4, metadata={"help": "perturbation σ = 2^-sigma_shift of the weight scale"})
    rank: int = field(default=1, metadata={"help": "rank r of each member's perturbation A Bᵀ (1 to 4)"})
    noise_reuse: int = field(default=1, metadata={"help": "steps that share the same noise (1: fresh every step)"})
    alpha: float = field(default=0.5, metadata={"help": "z-test level at step 0: fraction of weights that may move "
                                                        "by chance (0, 1]"})
    alpha_end: float = field(default=0.05, metadata={"help": "z-test level after alpha_decay_steps"})
    alpha_decay_steps: int = field(default=1000, metadata={"help": "steps over which 1/alpha goes linearly from "
                                                                   "1/alpha to 1/alpha_end (0: constant alpha)"})
    # Evaluation and checkpoints
    eval_every: int = field(default=25, metadata={"help": "steps between validation evaluations"})
    val_windows: int = field(default=32, metadata={"help": "validation windows (evenly spaced over the split)"})
    val_seq_len: int = field(default=256, metadata={"help": "bytes per validation window"})
    checkpoint_every: int = field(default=100, metadata={"help": "steps between checkpoints (and one at the end)"})
    no_progress: bool = field(default=False, metadata={"help": "no progress bar"})
    model: EggConfig = field(default_factory=EggConfig)

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = EggConfig(**self.model)
        n = self.population_size
        if n < 2 or n % 2:
            raise EggTrainError(f"--population_size must be even and >= 2 (antithetic pairs), got {n}")
        if self.group_size < 2 or self.group_size % 2 or n % self.group_size:
            raise EggTrainError(f"--group_size must be even and divide --population_size {n}, got {self.group_size}")
        for name in ("seq_len", "val_seq_len", "val_windows", "eval_every", "checkpoint_every", "noise_reuse"):
            if getattr(self, name) < 1:
                raise EggTrainError(f"--{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps < 1:
            raise EggTrainError(f"--max_steps must be >= 1, got {self.max_steps}")
        if self.max_wall_s is not None and self.max_wall_s <= 0:
            raise EggTrainError(f"--max_wall_s must be > 0, got {self.max_wall_s}")
        if not 0 <= self.sigma_shift <= 12:
            raise EggTrainError(f"--sigma_shift must be in [0, 12], got {self.sigma_shift}")
        if not 1 <= self.rank <= 4:
            raise EggTrainError(f"--rank must be in [1, 4] (int32 headroom of the low-rank term), got {self.rank}")
        if not (0 < self.alpha <= 1 and 0 < self.alpha_end <= 1):
            raise EggTrainError(f"--alpha and --alpha_end must be in (0, 1], got {self.alpha} and {self.alpha_end}")

    def to_dict(self) -> dict:
        return asdict(self)


def validation_bits_per_byte(params: dict, config: EggConfig, windows: torch.Tensor) -> float:
    """Exact code length of the unperturbed model's predictions on the validation windows, in bits per byte.

    The model's distribution is p(j) ∝ 2^(l_j/16) for its int8 logits l; this evaluates it exactly in float64
    (reporting only, outside the forward), where training uses the integer approximation `target_log2_prob`.
    """
    logits = forward(params, config, windows[:, :-1])
    log2p = torch.log_softmax(logits.double() * (math.log(2) / intops.ONE), -1) / math.log(2)
    return float(-log2p.gather(-1, windows[:, 1:, None]).mean())


def _start(config: EggTrainConfig, resume: bool) -> tuple[EggTrainConfig, dict, dict]:
    """(config, params, trainer_state): a fresh run, or the latest checkpoint of the run directory."""
    run_dir = Path(config.output_dir)
    if not config.output_dir:
        raise EggTrainError("--output_dir is required, e.g. --output_dir runs/egg")
    if not resume:
        if run_dir.exists() and any(run_dir.iterdir()):
            raise EggTrainError(f"{run_dir} is not empty; continue it with --resume or choose a new --output_dir")
        return config, init_params(config.model, config.seed), {"step": 0, "wall_s": 0.0, "member_tokens": 0}
    checkpoints = list_checkpoints(run_dir)
    if not checkpoints:
        raise EggTrainError(f"no checkpoint in {run_dir}/checkpoints to resume; run without --resume to start")
    stored = json.loads((run_dir / "config.json").read_text())
    # the run's own settings continue; only the budget and the display may change on resume
    stored.update(output_dir=config.output_dir, max_steps=config.max_steps, max_wall_s=config.max_wall_s,
                  no_progress=config.no_progress)
    tensors, state = load_checkpoint(checkpoints[-1])
    tensors.pop("es.step", None)
    return EggTrainConfig(**stored), tensors, state


def train(config: EggTrainConfig, resume: bool = False) -> Path:
    """Run (or continue) an EGG pretraining run; returns the run directory."""
    config, params, state = _start(config, resume)
    run_dir = Path(config.output_dir)
    text = corpus.load_corpus(config.data)
    corpus.check_length(text, config.seq_len, config.val_seq_len)
    val = torch.from_numpy(corpus.val_windows(text, config.val_windows, config.val_seq_len)).long()
    baselines = corpus.baselines(text.train, val.numpy())
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.json", json.dumps(config.to_dict(), indent=2))
    log = MetricsLog(run_dir / "metrics.jsonl")
    step, wall_s, member_tokens = state["step"], state["wall_s"], state["member_tokens"]
    if resume:
        log.truncate_after(step)
    else:
        log.log({"step": 0, "wall_s": 0.0, "member_tokens": 0, "params": parameter_count(config.model),
                 "train_bytes": len(text.train), "val_bytes": len(text.val), "train_files": text.train_files,
                 "val_files": text.val_files, "source": text.source,
                 "val_bits_per_byte": validation_bits_per_byte(params, config.model, val), **baselines})
        save_checkpoint(run_dir, 0, params, {"wall_s": 0.0, "member_tokens": 0})  # resumable from the start
    shapes = config.model.shapes()
    n, windows = config.population_size, config.population_size // config.group_size
    bar = tqdm(total=None if config.max_wall_s else config.max_steps, initial=step, disable=config.no_progress,
               desc="egg", unit="step")  # a wall-clock budget: no step total to count down to
    while step < config.max_steps and (config.max_wall_s is None or wall_s < config.max_wall_s):
        started = time.perf_counter()
        step += 1
        batch = corpus.train_windows(text, config.seed, step, windows, config.seq_len)
        tokens = torch.from_numpy(batch).long().repeat_interleave(config.group_size, 0)   # [N, T + 1]
        noise = qeggroll.pair_noise(shapes, config.seed, step, n, config.rank, config.noise_reuse)
        logits = forward(params, config.model, tokens[:, :-1], qeggroll.member_noise(noise, n), config.sigma_shift)
        scores = intops.target_log2_prob(logits, tokens[:, 1:]).sum(-1)                  # [N] int32, 1/16 bits
        alpha = qeggroll.alpha_at(step - 1, config.alpha, config.alpha_end, config.alpha_decay_steps)
        params, moved = qeggroll.update(params, noise, qeggroll.pair_fitness(scores), qeggroll.z_threshold(alpha))
        forward_s = time.perf_counter() - started
        record = {"step": step, "train_bits_per_byte": -int(scores.sum()) / (intops.ONE * n * config.seq_len),
                  "weights_moved": moved, "alpha": alpha, "member_tokens_per_s": n * config.seq_len / forward_s}
        last = step == config.max_steps or (config.max_wall_s is not None and wall_s + forward_s >= config.max_wall_s)
        if step % config.eval_every == 0 or last:
            record["val_bits_per_byte"] = validation_bits_per_byte(params, config.model, val)
            record.update(baselines)
        wall_s += time.perf_counter() - started
        member_tokens += n * config.seq_len
        record.update(wall_s=wall_s, member_tokens=member_tokens)
        if step % config.checkpoint_every == 0 or last:
            save_checkpoint(run_dir, step, params, {"wall_s": wall_s, "member_tokens": member_tokens})
        log.log(record)
        bar.update(1)
        bar.set_postfix({"train_bpb": f"{record['train_bits_per_byte']:.3f}",
                         **({"val_bpb": f"{record['val_bits_per_byte']:.3f}"} if "val_bits_per_byte" in record else {}),
                         "mtok/s": f"{record['member_tokens_per_s']:.0f}"})
    bar.close()
    return run_dir


def config_fields() -> list:
    """The settings the CLI turns into flags (everything but the nested model size)."""
    return [f for f in fields(EggTrainConfig) if f.name != "model"]
