"""The adapter mode of es.EggrollES: target nn.Linear layers keep their weights W and learn an fp32 adapter ΔW.

docs/design.md §1/§3: after the population is scored, the fitness-weighted noise factors are folded into each target
layer's adapter: ΔW += lr · g with g = 1/(N√r) Σ_k c_k A_k B_kᵀ (1/σ divided out). Noise is regenerated from its key
here, never kept from the forward passes. The LLM trainer, export, bench and the diagnostics use this mode (the
recipe's `es.adapter_rank`); the generic layer's default is the in-place mode (inplace.py).

The per-member scoring path writes member i's W + s_i (σ/√r) A_k B_kᵀ into each wrapped layer's weight (the layer
adds ΔW itself), from a copy of W taken once, and writes that copy back on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .adapter import decay, es_step_coefficients, fold_dense, fold_lowrank, lowrank_change_norm
from .noise import layer_noise, noise_seed
from .perturbed import EggrollLinear, Population

SIGMA_SCALES = ("absolute", "weight_rms")
OPTIMIZERS = ("sgd", "adam")
ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # Kingma & Ba's defaults


class AdapterBackend:
    """SGD (optionally with momentum and decoupled weight decay of ΔW), or Adam on a dense ΔW, on the adapters of
    EggrollLinear layers.

    `sigma_scale="weight_rms"` gives each layer the noise σ·RMS(W) and the step lr·RMS(W), so one σ and one lr mean
    the same relative change on every layer (the 1/σ of the estimate is divided out per layer, as for the global σ).
    `optimizer="adam"` (dense adapters) steps by Adam's normalised moments of the ES gradient instead of the gradient.
    """

    def __init__(self, model: nn.Module, layers: dict[str, EggrollLinear], population: Population, *, lr: float,
                 momentum: float = 0.0, weight_decay: float = 0.0, sigma_scale: str = "absolute",
                 optimizer: str = "sgd"):
        if sigma_scale not in SIGMA_SCALES:
            raise ValueError(f"sigma_scale must be one of {', '.join(SIGMA_SCALES)}, got {sigma_scale!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        if optimizer == "adam" and (momentum or any(layer.adapter_rank != "full" for layer in layers.values())):
            raise ValueError("optimizer adam keeps dense moments: use adapter_rank 'full' and momentum 0")
        self.model, self.layers, self.population = model, layers, population
        self.lr, self.momentum, self.weight_decay, self.optimizer = lr, momentum, weight_decay, optimizer
        self.velocity: dict[str, tuple[torch.Tensor, ...]] = {}  # momentum (or Adam's m, v), shaped as the adapter
        for layer in layers.values():
            layer.noise_scale = (float(layer.base.weight.float().pow(2).mean().sqrt()) if sigma_scale == "weight_rms"
                                 else 1.0)

    def layer_noise(self, layer: EggrollLinear) -> tuple[torch.Tensor, torch.Tensor]:
        """The fp32 factors every member of this step used on `layer`, regenerated from their key."""
        pop = self.population
        m, n = layer.base.out_features, layer.base.in_features
        key = noise_seed(pop.seed, pop.step, pop.noise_reuse, layer.layer_index)
        return layer_noise(key, pop.num_pairs, m, n, pop.rank, layer.base.weight.device)

    def begin_step(self) -> None:
        pass

    def check_coverage(self) -> None:
        pass  # EggrollLinear layers replace the modules, so every forward through them is perturbed

    @torch.no_grad()
    def update(self, fitness: torch.Tensor) -> dict[str, float]:
        """Fold the ES step for the population's current step into every adapter; returns update statistics."""
        pop = self.population
        coeffs = es_step_coefficients(fitness, pop.pairs.cpu(), pop.signs.cpu(), pop.num_pairs, pop.population_size,
                                      pop.rank, 1.0)  # coefficients of g itself; lr applied below
        keep = 1.0 - self.lr * self.weight_decay
        sq_norm = 0.0
        for name, layer in self.layers.items():
            A, B = self.layer_noise(layer)                 # A: [P, m, r]  B: [P, n, r]
            c = coeffs.to(A.device) * layer.noise_scale    # the layer's relative step (sigma_scale)
            if layer.adapter_rank == "full":
                g = fold_dense(torch.zeros_like(layer.delta), A, B, c)
                if self.optimizer == "adam":
                    g = self._adam(name, g, pop.step + 1)
                elif self.momentum:
                    g = self.velocity[name][0] * self.momentum + g if name in self.velocity else g
                    self.velocity[name] = (g,)
                new = layer.delta * keep + self.lr * g
                sq_norm += float((new - layer.delta).pow(2).sum())  # before the copy: no clone of Δ needed
                layer.delta.copy_(new)
                continue
            R = layer.adapter_rank
            if self.momentum:  # velocity ← μ·velocity + g, kept at the adapter's rank
                mu, mv = self.velocity.get(name, (torch.zeros_like(layer.lora_U), torch.zeros_like(layer.lora_V)))
                mu, mv = fold_lowrank(*decay(mu, mv, self.momentum), A, B, c, R)
                self.velocity[name] = (mu, mv)
                A, B, c = mu[None], mv[None], torch.ones(1, device=A.device)  # step along the velocity instead
            U, V = decay(layer.lora_U, layer.lora_V, keep) if keep != 1.0 else (layer.lora_U, layer.lora_V)
            U, V = fold_lowrank(U, V, A, B, c * self.lr, R)
            sq_norm += lowrank_change_norm(layer.lora_U, layer.lora_V, U, V) ** 2
            layer.lora_U.copy_(U)
            layer.lora_V.copy_(V)
        return {"update_norm": sq_norm ** 0.5, "fitness_std": float(fitness.std()) if fitness.numel() > 1 else 0.0}

    def _adam(self, name: str, g: torch.Tensor, t: int) -> torch.Tensor:
        """Adam's bias-corrected m̂ / (√v̂ + ε) of the ES gradient g at step t (1-based); moments kept in velocity."""
        (b1, b2), layer = ADAM_BETAS, self.layers[name]
        m, v = self.velocity.get(name, (torch.zeros_like(g), torch.zeros_like(g)))
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        self.velocity[name] = (m, v)
        # Adam's step is ~lr per coordinate whatever g's scale: the layer's relative scale enters here again
        return layer.noise_scale * (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + ADAM_EPS)

    @contextmanager
    def members(self) -> Iterator[Callable[[int], None]]:
        """`apply(i)` writes member i's perturbed base weights; the exact original weights are written back on exit."""
        for name, layer in self.layers.items():
            weight = layer.base.weight
            if any(p is weight for module in self.model.modules() if module is not layer.base
                   for p in module.parameters(recurse=False)):
                raise ValueError(f"{name} shares its weight with another module (tied embeddings?): writing a member "
                                 "into it would perturb both; score this model batched (es.evaluate / ask-tell)")
        pop = self.population
        centre = {name: layer.base.weight.detach().clone() for name, layer in self.layers.items()}

        @torch.no_grad()
        def apply(member: int) -> None:
            pair, scale = int(pop.pairs[member]), float(pop.signs[member]) * pop.sigma / pop.rank ** 0.5
            for name, layer in self.layers.items():
                A, B = self.layer_noise(layer)
                noise = A[pair] @ B[pair].T * layer.noise_scale                         # [m, n]
                layer.base.weight.copy_((centre[name].float() + scale * noise).to(layer.base.weight.dtype))

        try:
            yield apply
        finally:
            with torch.no_grad():
                for name, layer in self.layers.items():
                    layer.base.weight.copy_(centre[name])

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Adapters and momentum buffers, on the CPU (the names of the run checkpoints)."""
        state = {f"adapter.{k}": v for k, v in adapter_state(self.layers).items()}
        state.update({f"optimizer.{name}.velocity.{i}": t.cpu().contiguous()
                      for name, ts in self.velocity.items() for i, t in enumerate(ts)})
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_adapter_state(self.layers, {k[len("adapter."):]: v for k, v in state.items() if k.startswith("adapter.")})
        self.velocity = {}
        for name, layer in self.layers.items():
            prefix = f"optimizer.{name}.velocity."
            parts = [state[k] for k in sorted(k for k in state if k.startswith(prefix))]
            if parts:
                self.velocity[name] = tuple(p.to(layer.base.weight.device) for p in parts)

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
