"""Where θ lives, adapter mode: target nn.Linear layers keep their weights W and learn an fp32 adapter ΔW beside it.

The LLM trainer's default (the recipe's `es.adapter_rank`), and the generic layer's with `adapter_rank=R|"full"`.
The step's noise, the per-member writes and the update are the ES core's (es.py), shared with the in-place mode;
this store only says how ΔW takes a step (docs/design.md §3):

- dense ΔW (`adapter_rank: full`): ΔW ← (1 − lr·wd) ΔW + lr·d, d the optimizer's direction of the ES gradient g;
- low-rank ΔW = U Vᵀ (rank R): the step is folded in and truncated back to rank R (adapter.fold_lowrank). With SGD
  on low-rank noise the fold takes the noise factors as they are, g = Σ_k c_k A_k B_kᵀ (exact and cheap), and
  momentum keeps a rank-R velocity; any other optimizer or strategy gives a dense step, folded the same way.

The batched forward is EggrollLinear's (perturbed.py): it reads the same population noise as everything else.
"""

from __future__ import annotations

import torch
from torch import nn

from .adapter import decay, fold_dense, fold_lowrank, fold_step_lowrank, lowrank_change_norm
from .optim import SGD, Optimizer
from .perturbed import EggrollLinear
from .strategy import LowRankNoise, Target, lowrank_sum


class AdapterStore:
    def __init__(self, model: nn.Module, layers: dict[str, EggrollLinear]):
        self.model, self.layers = model, layers
        self.by_target = {layer.target.name: layer for layer in layers.values()}

    def begin_step(self) -> None:
        pass

    def check_coverage(self) -> None:
        pass  # EggrollLinear layers replace the modules, so every forward through them is perturbed

    def check_member_writes(self) -> None:
        """A member is written into W; a W shared with another module (tied embeddings) would perturb both, which the
        batched forward (noise on this layer's output only) does not."""
        for name, layer in self.layers.items():
            weight = layer.base.weight
            if any(p is weight for module in self.model.modules() if module is not layer.base
                   for p in module.parameters(recurse=False)):
                raise ValueError(f"{name} shares its weight with another module (tied embeddings?): writing a member "
                                 "into it would perturb both; score this model batched (es.evaluate / ask-tell)")

    @torch.no_grad()
    def apply(self, target: Target, g: torch.Tensor | LowRankNoise, coeffs: torch.Tensor | None,
              optimizer: Optimizer, t: int) -> float:
        """Fold the step of one target into its adapter; returns ‖ΔW_new − ΔW‖². g: dense, or factors + coeffs."""
        layer = self.by_target[target.name]
        lr, keep = optimizer.lr, 1.0 - optimizer.lr * optimizer.weight_decay
        if layer.adapter_rank == "full":
            if coeffs is not None:
                A, B = g
                g = fold_dense(torch.zeros_like(layer.delta), A, B, coeffs.to(A.device))
            d = self._direction(target, g, optimizer, t)
            new = layer.delta * keep + lr * d.view_as(layer.delta)
            change = float((new - layer.delta).pow(2).sum())  # before the copy: no clone of Δ needed
            layer.delta.copy_(new)
            return change
        R = layer.adapter_rank
        if isinstance(optimizer, SGD) and coeffs is not None:  # the noise factors fold in as they are
            A, B = g
            c = coeffs.to(A.device)
            if optimizer.momentum:  # velocity ← μ·velocity + g, kept at the adapter's rank
                mu, mv = optimizer.state.get(target.name, (torch.zeros_like(layer.lora_U),
                                                           torch.zeros_like(layer.lora_V)))
                mu, mv = fold_lowrank(*decay(mu, mv, optimizer.momentum), A, B, c, R)
                optimizer.state[target.name] = (mu, mv)
                A, B, c = mu[None], mv[None], torch.ones(1, device=A.device)  # step along the velocity instead
            U, V = decay(layer.lora_U, layer.lora_V, keep) if keep != 1.0 else (layer.lora_U, layer.lora_V)
            U, V = fold_lowrank(U, V, A, B, c * lr, R)
        else:
            if coeffs is not None:
                g = lowrank_sum(target, g, coeffs)
            d = lr * self._direction(target, g, optimizer, t).view(layer.lora_U.shape[0], -1)    # dense [m, n]
            U, V = decay(layer.lora_U, layer.lora_V, keep) if keep != 1.0 else (layer.lora_U, layer.lora_V)
            U, V = fold_step_lowrank(U, V, d, R)
        change = lowrank_change_norm(layer.lora_U, layer.lora_V, U, V) ** 2
        layer.lora_U.copy_(U)
        layer.lora_V.copy_(V)
        return change

    @staticmethod
    def _direction(target: Target, g: torch.Tensor, optimizer: Optimizer, t: int) -> torch.Tensor:
        d = optimizer.direction(target.name, g, t)
        # a scale-free direction (Adam) is ~lr per coordinate whatever g's scale: the relative scale enters here
        return d * target.scale if optimizer.scale_free and target.scale != 1.0 else d

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Adapters on the CPU (the names of the run checkpoints)."""
        return {f"adapter.{k}": v for k, v in adapter_state(self.layers).items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_adapter_state(self.layers, {k[len("adapter."):]: v for k, v in state.items() if k.startswith("adapter.")})

    def trained_numel(self) -> int:
        return sum(b.numel() for layer in self.layers.values() for b in layer.buffers(recurse=False))

    def detach(self) -> nn.Module:
        """Merge every ΔW into its base weight and put the plain nn.Linear modules back."""
        from .export import merge_into_base

        merge_into_base(self.model, self.layers)
        return self.model


def adapter_state(layers: dict[str, EggrollLinear]) -> dict[str, torch.Tensor]:
    """Every adapter buffer (lora_U / lora_V, or delta) by `layer.buffer` name, on the CPU."""
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
