"""Resumable checkpoints and the run directory's adapter export.

A checkpoint is a folder `checkpoints/step-NNNNNN/` holding `state.safetensors` (every adapter buffer and the
optimizer's momentum, fp32) and `trainer_state.json` (step, counters, wall-clock). It is written to a temporary
folder and renamed into place, so a run killed mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .io import atomic_directory, atomic_write_text
from .perturbed import EggrollLinear

_STEP_DIR = re.compile(r"step-(\d+)$")


def adapter_state(layers: dict[str, EggrollLinear]) -> dict[str, torch.Tensor]:
    return {f"{name}.{key}": t.detach().cpu().contiguous()
            for name, layer in layers.items() for key, t in layer.named_buffers(recurse=False)}


def load_adapter_state(layers: dict[str, EggrollLinear], state: dict[str, torch.Tensor]) -> None:
    for name, layer in layers.items():
        for key, buffer in layer.named_buffers(recurse=False):
            full = f"{name}.{key}"
            if full not in state or state[full].shape != buffer.shape:
                raise ValueError(f"checkpoint does not match the model: {full} missing or of another shape; "
                                 "resume with the recipe the run was started with")
            buffer.copy_(state[full])


def save_checkpoint(run_dir: Path, step: int, layers, optimizer_state: dict, trainer_state: dict,
                    keep: int = 2) -> Path:
    root = Path(run_dir) / "checkpoints"
    target = root / f"step-{step:06d}"
    with atomic_directory(target, overwrite=True) as tmp:
        tensors = {f"adapter.{k}": v for k, v in adapter_state(layers).items()}
        tensors.update({f"optimizer.{k}": v.contiguous() for k, v in optimizer_state.items()})
        save_file(tensors, str(tmp / "state.safetensors"))
        atomic_write_text(tmp / "trainer_state.json", json.dumps({"step": step, **trainer_state}, indent=2))
    for old in list_checkpoints(run_dir)[:-keep]:
        for f in old.iterdir():
            f.unlink()
        old.rmdir()
    return target


def list_checkpoints(run_dir: Path) -> list[Path]:
    root = Path(run_dir) / "checkpoints"
    found = [p for p in root.glob("step-*") if _STEP_DIR.search(p.name) and (p / "trainer_state.json").is_file()]
    return sorted(found, key=lambda p: int(_STEP_DIR.search(p.name).group(1)))


def checkpoint_step(path: Path | None) -> int:
    """The step a checkpoint folder holds; -1 for None (no checkpoint)."""
    return -1 if path is None else int(_STEP_DIR.search(Path(path).name).group(1))


def load_checkpoint(path: Path, layers) -> tuple[dict, dict]:
    """Restore adapters in place; returns (optimizer_state, trainer_state)."""
    tensors = load_file(str(Path(path) / "state.safetensors"))
    load_adapter_state(layers, {k[len("adapter."):]: v for k, v in tensors.items() if k.startswith("adapter.")})
    optimizer = {k[len("optimizer."):]: v for k, v in tensors.items() if k.startswith("optimizer.")}
    return optimizer, json.loads((Path(path) / "trainer_state.json").read_text())
