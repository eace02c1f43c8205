"""Resumable checkpoints: `checkpoints/step-NNNNNN/` folders written atomically.

A checkpoint holds `state.safetensors` (the ES state: every adapter buffer, the optimizer's momentum and the step,
fp32 tensors) and `trainer_state.json` (step, counters, wall-clock). It is written to a temporary folder and renamed
into place, so a run killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .io import atomic_directory, atomic_write_text, writing

_STEP_DIR = re.compile(r"step-(\d+)$")


def save_checkpoint(run_dir: Path, step: int, tensors: dict[str, torch.Tensor], trainer_state: dict,
                    keep: int = 2) -> Path:
    """Write `tensors` and `trainer_state` as checkpoints/step-{step}; keep the newest `keep` checkpoints."""
    target = Path(run_dir) / "checkpoints" / f"step-{step:06d}"
    with writing(f"the checkpoint of step {step}", target), atomic_directory(target, overwrite=True) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp / "state.safetensors"))
        atomic_write_text(tmp / "trainer_state.json", json.dumps({"step": step, **trainer_state}, indent=2))
    for old in list_checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old)
    return target


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    found = [p for p in root.glob("step-*") if _STEP_DIR.search(p.name) and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.search(p.name).group(1)))


def checkpoint_step(path: Path | None) -> int:
    """The step a checkpoint folder holds; -1 for None (no checkpoint)."""
    return -1 if path is None else int(_STEP_DIR.search(Path(path).name).group(1))


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(tensors, trainer_state) of a checkpoint folder; a checkpoint without the ES step gets it from the state."""
    tensors = load_file(str(Path(path) / "state.safetensors"))
    trainer_state = json.loads((Path(path) / "trainer_state.json").read_text())
    tensors.setdefault("es.step", torch.tensor(trainer_state["step"]))
    return tensors, trainer_state
