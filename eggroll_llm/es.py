"""The ES core: `EggrollES`, one ask/tell object that owns the step, the fitness shaping and the update.

docs/design.md §1/§3: after the population is scored, the fitness-weighted noise factors are folded into each
target layer's fp32 adapter: ΔW += lr · g with g = 1/(N√r) Σ_k c_k A_k B_kᵀ (1/σ divided out). Noise is regenerated
from its key here, never kept from the forward passes. State (adapters, momentum, step) is explicit and
checkpointable, in the ask/tell style of evosax. The LLM trainer, export, bench and the diagnostics all use this
one object.

    es = EggrollES(model, population_size=64, sigma=0.05, lr=0.05)
    for _ in range(steps):
        scores = es.evaluate(score_population)   # score_population(model, population) -> [N], one batched forward
        es.tell(scores)
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .adapter import decay, es_step_coefficients, fold_dense, fold_lowrank
from .fitness import check_fitness_method, shape_fitness
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
    """EGGROLL as one ask/tell object: the population's noise, the step counter, fitness shaping and the fold.

    Wraps the target nn.Linear layers of `model` (`attach_eggroll`); updates fold into their fp32 adapters. One step:

        population = es.ask()                     # this step's noise; say which member each batch row is:
        population.set_rows(member_ids)           #   population_rows / population_layout give the layouts
        scores = score(model(inputs))             # ONE batched forward for the whole population
        stats = es.tell(scores, prompt_ids)       # shape fitness (`fitness`), fold the ES step, next step

    `scores` is [N] (one score per member) or [N, J] with `prompt_ids` [N, J] naming the prompt of each score (the
    LLM trainer's layout: group-centred fitness compares members on equal prompts). `fitness` is one of
    fitness.FITNESS_METHODS; "none" takes the scores as already shaped fitness.
    """

    def __init__(self, model: nn.Module, *, population_size: int, sigma: float, lr: float, rank: int = 1,
                 adapter_rank: int | str = 1, antithetic: bool = True, noise_reuse: int = 1, seed: int = 0,
                 target_modules: list[str] | str | None = None, momentum: float = 0.0, weight_decay: float = 0.0,
                 fitness: str = "group_centered"):
        check_fitness_method(fitness)
        self.model, self.fitness, self.step = model, fitness, 0
        self.population = Population(population_size=population_size, sigma=sigma, rank=rank, antithetic=antithetic,
                                     seed=seed, noise_reuse=noise_reuse)
        self.layers = attach_eggroll(model, self.population, target_modules, adapter_rank)
        self.updater = ESUpdater(self.layers, self.population, lr=lr, momentum=momentum, weight_decay=weight_decay)

    @classmethod
    def from_config(cls, model: nn.Module, es, seed: int) -> EggrollES:
        """The ES of a run: `es` is the run config's `es` section (config.ESConfig)."""
        return cls(model, population_size=es.population_size, sigma=es.sigma, lr=es.lr, rank=es.rank,
                   adapter_rank=es.adapter_rank, antithetic=es.antithetic, noise_reuse=es.noise_reuse, seed=seed,
                   target_modules=es.target_modules, momentum=es.momentum, weight_decay=es.weight_decay,
                   fitness=es.fitness)

    def ask(self) -> Population:
        """Begin step `self.step`: the population now carries this step's noise (rows: set them per forward)."""
        self.population.set_step(self.step)
        return self.population

    def evaluate(self, score_population: Callable[[nn.Module, Population], torch.Tensor]) -> torch.Tensor:
        """`score_population(model, population)` at this step, without gradients; rows are reset afterwards."""
        population = self.ask()
        try:
            with torch.no_grad():
                return score_population(self.model, population)
        finally:
            population.set_rows(None)

    def tell(self, scores: torch.Tensor, prompt_ids: torch.Tensor | None = None) -> dict[str, float]:
        """Shape `scores` into fitness, fold the ES step into the adapters and move to the next step."""
        scores = torch.as_tensor(scores, dtype=torch.float32).cpu()
        N = self.population.population_size
        if scores.dim() not in (1, 2) or scores.shape[0] != N:
            raise ValueError(f"scores have shape {tuple(scores.shape)}; expected [{N}] (one per member) or "
                             f"[{N}, J] (J prompts per member, with prompt_ids)")
        grid = scores if scores.dim() == 2 else scores[:, None]                     # [N, J]
        ids = torch.zeros(grid.shape, dtype=torch.long) if prompt_ids is None else torch.as_tensor(prompt_ids)
        stats = self.updater.step(shape_fitness(grid, ids.reshape(grid.shape), self.fitness))
        self.step += 1
        return stats

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Adapters, optimizer state and the step: everything a resumed run needs (tensors, for safetensors)."""
        state = {f"adapter.{k}": v for k, v in adapter_state(self.layers).items()}
        state.update({f"optimizer.{k}": v.contiguous() for k, v in self.updater.state_dict().items()})
        return {**state, "es.step": torch.tensor(self.step)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        load_adapter_state(self.layers, {k[len("adapter."):]: v for k, v in state.items() if k.startswith("adapter.")})
        self.updater.load_state_dict({k[len("optimizer."):]: v for k, v in state.items()
                                      if k.startswith("optimizer.")})
        self.step = int(state["es.step"])


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


def population_rows(population: Population, batch_size: int, device=None) -> torch.Tensor:
    """Member ids for `batch_size` inputs repeated once per member: [N * batch_size], member-major."""
    return torch.arange(population.population_size, device=device).repeat_interleave(batch_size)


def population_layout(population_size: int, members_per_prompt: int, prompts_per_member: int):
    """Member id and prompt slot of every generated row, member-major: ([N * J], [N * J]).

    Group g = members [g·M, (g+1)·M) answers prompt slots [g·J, (g+1)·J); antithetic partners (2k, 2k+1) always
    fall in the same group because M is even.
    """
    members = torch.arange(population_size).repeat_interleave(prompts_per_member)
    group = members // members_per_prompt
    slots = group * prompts_per_member + torch.arange(prompts_per_member).repeat(population_size)
    return members, slots
