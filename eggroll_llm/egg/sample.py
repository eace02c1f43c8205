"""Sampling bytes from a trained EGG run, in integers: p(j) ∝ 2^(l_j/16) read from the same exp2 table as the loss.

    eggroll-llm egg sample runs/egg --prompt "def " --bytes 200
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ..checkpoint import list_checkpoints, load_checkpoint
from . import intops
from .corpus import SEPARATOR
from .model import EggConfig, forward

CONTEXT = 256  # bytes of history the model rereads for each new byte (the state is recomputed, not carried)


class EggRunError(ValueError):
    """A run directory that cannot be sampled; the message names it and the fix."""


def load_run(run_dir: str | Path) -> tuple[dict[str, torch.Tensor], EggConfig]:
    run_dir = Path(run_dir)
    checkpoints = list_checkpoints(run_dir) if run_dir.is_dir() else []
    if not checkpoints or not (run_dir / "config.json").is_file():
        raise EggRunError(f"{run_dir} holds no EGG checkpoint; give the --output_dir of an `eggroll-llm egg train` run")
    tensors, _ = load_checkpoint(checkpoints[-1])
    tensors.pop("es.step", None)
    return tensors, EggConfig(**json.loads((run_dir / "config.json").read_text())["model"])


def sample(params: dict[str, torch.Tensor], config: EggConfig, prompt: str, length: int, seed: int) -> str:
    """The prompt followed by `length` sampled bytes (decoded as UTF-8, invalid sequences replaced)."""
    if length < 0:
        raise EggRunError(f"--bytes must be >= 0, got {length}")
    generator = torch.Generator().manual_seed(seed)
    history = [SEPARATOR] + list(prompt.encode())
    for _ in range(length):
        tokens = torch.tensor([history[-CONTEXT:]])
        logits = forward(params, config, tokens)[0, -1]
        weights = intops.EXP2_TABLE[logits.long() + intops.LOGIT_OFFSET].long()  # integer unnormalised p
        cumulative = torch.cumsum(weights, 0)
        draw = torch.randint(0, int(cumulative[-1]), (1,), generator=generator)
        history.append(int(torch.searchsorted(cumulative, draw, right=True)))
    return bytes(history[1:]).decode("utf-8", errors="replace")
