"""Adapters out as PEFT LoRA folders (DESIGN.md §3).

PEFT computes W + scaling · lora_B lora_A with scaling = lora_alpha / r. We write lora_B = U (m×R),
lora_A = Vᵀ (R×n) and lora_alpha = R, so scaling is 1 and the folder reproduces ΔW = U Vᵀ exactly. A dense
(`adapter_rank: full`) delta is truncated by SVD to the export rank, and the energy kept is reported.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .adapter import truncate
from .io import atomic_directory
from .perturbed import EggrollLinear

DEFAULT_FULL_EXPORT_RANK = 64


def lora_factors(layer: EggrollLinear, rank: int | None) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(lora_B [m, R], lora_A [R, n], energy kept) of one layer's delta."""
    if layer.adapter_rank == "full" or (rank is not None and rank != layer.adapter_rank):
        U, V, energy = truncate(layer.delta_weight(), rank or DEFAULT_FULL_EXPORT_RANK)
    else:
        U, V, energy = layer.lora_U, layer.lora_V, 1.0
    return U.detach().float().cpu().contiguous(), V.detach().float().cpu().T.contiguous(), energy


def export_peft_adapter(layers: dict[str, EggrollLinear], out_dir: str | Path, base_model: str, *,
                        rank: int | None = None, overwrite: bool = False) -> dict:
    """Write `adapter_config.json` + `adapter_model.safetensors` loadable by `PeftModel.from_pretrained`."""
    from peft import LoraConfig

    tensors, energies, ranks = {}, [], set()
    for name, layer in layers.items():
        lora_B, lora_A, energy = lora_factors(layer, rank)
        tensors[f"base_model.model.{name}.lora_A.weight"] = lora_A
        tensors[f"base_model.model.{name}.lora_B.weight"] = lora_B
        energies.append(energy)
        ranks.add(lora_A.shape[0])
    (r,) = ranks
    config = LoraConfig(r=r, lora_alpha=r, lora_dropout=0.0, bias="none", task_type="CAUSAL_LM",
                        target_modules=sorted(layers), base_model_name_or_path=base_model)
    with atomic_directory(out_dir, overwrite=overwrite) as tmp:
        config.save_pretrained(str(tmp))
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    return {"rank": r, "energy_kept": min(energies) if energies else 1.0, "modules": len(layers)}
