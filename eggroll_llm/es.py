"""The ES updater, and EGGROLL as a generic optimizer for any nn.Module built from nn.Linear.

DESIGN.md §1/§3: after the population is scored, the fitness-weighted noise factors are folded into each target
layer's fp32 adapter: ΔW += lr · g with g = 1/(N√r) Σ_k c_k A_k B_kᵀ (1/σ divided out). Noise is regenerated from
its key here, never kept from the forward passes. State (adapter + momentum) is explicit and checkpointable, in the
ask/tell spirit of evosax: `perturb(step)` asks, `tell(fitness)` updates.

    es = EggrollES(model, population_size=64, sigma=0.05, lr=0.05)
    for step in range(steps):
        fitness = es.evaluate(step, score_population)   # score_population(model, population) -> [N]
        es.tell(fitness)
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .adapter import decay, es_step_coefficients, fold_dense, fold_lowrank
from .noise import layer_noise, noise_seed
from .perturbed import EggrollLinear, Population, attach_eggroll


class ESUpdater:
    """SGD (optionally with momentum and decoupled weight decay) on the adapters of EggrollLinear layers."""

    def __init__(self, layers: dict[str, EggrollLinear], population: Population, *, lr: float,
                 momentum: float = 0.0, weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.layers, self.population = layers, population
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.velocity: dict[str, tuple[torch.Tensor, ...]] = {}  # momentum buffers, same shape as each adapter

    def checked(self, fitness: torch.Tensor) -> torch.Tensor:
        """fp32 CPU fitness of shape [N], finite: one NaN would silently corrupt every adapter."""
        fitness = fitness.to(torch.float32).cpu()
        if fitness.shape != (self.population.population_size,):
            raise ValueError(f"fitness has shape {tuple(fitness.shape)}, expected ({self.population.population_size},)")
        if not bool(torch.isfinite(fitness).all()):
            raise ValueError("fitness contains NaN or inf; check the reward function and the fitness shaping")
        return fitness

    def layer_noise(self, layer: EggrollLinear) -> tuple[torch.Tensor, torch.Tensor]:
        """The fp32 factors every member of this step used on `layer`, regenerated from their key."""
        pop = self.population
        m, n = layer.base.out_features, layer.base.in_features
        key = noise_seed(pop.seed, pop.step, pop.noise_reuse, layer.layer_index)
        return layer_noise(key, pop.num_pairs, m, n, pop.rank, layer.base.weight.device)

    @torch.no_grad()
    def step(self, fitness: torch.Tensor) -> dict[str, float]:
        """Fold the ES step for the population's current step into every adapter; returns update statistics."""
        pop = self.population
        fitness = self.checked(fitness)
        coeffs = es_step_coefficients(fitness, pop.pairs.cpu(), pop.signs.cpu(), pop.num_pairs, pop.population_size,
                                      pop.rank, 1.0)  # coefficients of g itself; lr applied below
        sq_norm = 0.0
        for name, layer in self.layers.items():
            A, B = self.layer_noise(layer)                 # A: [P, m, r]  B: [P, n, r]
            c = coeffs.to(A.device)
            keep = 1.0 - self.lr * self.weight_decay
            if layer.adapter_rank == "full":
                g = fold_dense(torch.zeros_like(layer.delta), A, B, c)
                if self.momentum:
                    g = self.velocity[name][0] * self.momentum + g if name in self.velocity else g
                    self.velocity[name] = (g,)
                before = layer.delta.clone()
                layer.delta.copy_(layer.delta * keep + self.lr * g)
                sq_norm += float((layer.delta - before).pow(2).sum())
                continue
            R = layer.adapter_rank
            if self.momentum:  # velocity ← μ·velocity + g, kept at the adapter's rank
                mu, mv = self.velocity.get(name, (torch.zeros_like(layer.lora_U), torch.zeros_like(layer.lora_V)))
                mu, mv = fold_lowrank(*decay(mu, mv, self.momentum), A, B, c, R)
                self.velocity[name] = (mu, mv)
                A, B, c = mu[None], mv[None], torch.ones(1, device=A.device)  # step along the velocity instead
            before = layer.delta_weight()
            U, V = decay(layer.lora_U, layer.lora_V, keep) if keep != 1.0 else (layer.lora_U, layer.lora_V)
            U, V = fold_lowrank(U, V, A, B, c * self.lr, R)
            layer.lora_U.copy_(U)
            layer.lora_V.copy_(V)
            sq_norm += float((layer.delta_weight() - before).pow(2).sum())
        return {"update_norm": sq_norm ** 0.5, "fitness_std": float(fitness.std()) if fitness.numel() > 1 else 0.0}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"{name}.velocity.{i}": t.cpu() for name, ts in self.velocity.items() for i, t in enumerate(ts)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.velocity = {}
        for name, layer in self.layers.items():
            parts = [state[k] for k in sorted(k for k in state if k.startswith(f"{name}.velocity."))]
            if parts:
                self.velocity[name] = tuple(p.to(layer.base.weight.device) for p in parts)


class EggrollES:
    """EGGROLL on any nn.Module built from nn.Linear: low-rank population noise, batched scoring, folded updates.

    `score_population(model, population) -> Tensor[N]` must run the whole population in one batched forward:
    repeat the inputs once per member and call `population.set_rows(member_id_of_each_row)` before the forward
    (see `population_rows`).
    """

    def __init__(self, model: nn.Module, *, population_size: int, sigma: float, lr: float, rank: int = 1,
                 adapter_rank: int | str = 1, antithetic: bool = True, noise_reuse: int = 1, seed: int = 0,
                 target_modules: list[str] | str | None = None, momentum: float = 0.0, weight_decay: float = 0.0):
        self.model = model
        self.population = Population(population_size=population_size, sigma=sigma, rank=rank, antithetic=antithetic,
                                     seed=seed, noise_reuse=noise_reuse)
        self.layers = attach_eggroll(model, self.population, target_modules, adapter_rank)
        self.updater = ESUpdater(self.layers, self.population, lr=lr, momentum=momentum, weight_decay=weight_decay)

    def evaluate(self, step: int, score_population: Callable[[nn.Module, Population], torch.Tensor]) -> torch.Tensor:
        """Fitness of every member at `step` (rows are reset to the unperturbed model afterwards)."""
        self.population.set_step(step)
        try:
            with torch.no_grad():
                return score_population(self.model, self.population)
        finally:
            self.population.set_rows(None)

    def tell(self, fitness: torch.Tensor) -> dict[str, float]:
        return self.updater.step(fitness)


def population_rows(population: Population, batch_size: int, device=None) -> torch.Tensor:
    """Member ids for `batch_size` inputs repeated once per member: [N * batch_size], member-major."""
    return torch.arange(population.population_size, device=device).repeat_interleave(batch_size)
