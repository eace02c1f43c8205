"""The ES core: `EggrollES`, one ask/tell object that owns the step, the fitness shaping and the update, for any
nn.Module.

docs/design.md §1: member i of a step scores the parameters θ + s_i σ ε_k (antithetic partners share ε_k with signs
±1), ε regenerated from the key (seed, step // noise_reuse, parameter index), and the step moves θ by lr times the
fitness-weighted noise (1/σ divided out). Two modes hold θ:

- in place (the default, as in torcheggroll and eggroll-trainer): the module's own parameters are the centre. The
  strategy (strategy.py: EGGROLL's low-rank noise by default, OpenAI-ES's dense noise, or a subclass) draws the
  noise; after a step the model *is* the new centre and is saved or used as usual (inplace.py, es_layers.py);
- adapter mode (`adapter_rank=R` or "full"): target nn.Linear layers keep W and learn an fp32 adapter ΔW, as the
  LLM trainer does (adapter_backend.py; EGGROLL noise only).

Two ways to score a step:

    es = EggrollES(model, population_size=64, sigma=0.05, lr=0.05)
    metrics = es.step(fitness_fn)          # fitness_fn(model) -> float, called once per member under its noise

    scores = es.evaluate(score_population) # score_population(model, population) -> [N]: ONE batched forward,
    stats = es.tell(scores)                #   after population.set_rows(member id of each row of dim 0)

`tell` also takes scores [N, J] with `prompt_ids` [N, J] (the LLM trainer's layout: group-centred fitness compares
members on equal prompts). State (parameters or adapters, momentum, step) is explicit and checkpointable, in the
ask/tell style of evosax; `merge()` hands back the plain model.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .adapter_backend import AdapterBackend
from .es_layers import select_targets
from .fitness import check_fitness_method, shape_fitness
from .inplace import InPlaceBackend
from .perturbed import Population, attach_eggroll
from .strategy import EggrollStrategy, Strategy


def check_optimizer(lr: float, momentum: float, weight_decay: float) -> None:
    """Refuse settings that make the update diverge or flip sign every step (μ ≥ 1, lr·wd ≥ 1)."""
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must lie in [0, 1) (heavy ball: μ ≥ 1 never forgets a step), got {momentum}")
    if not (weight_decay >= 0 and lr * weight_decay < 1):
        raise ValueError(f"weight_decay must be >= 0 with lr * weight_decay < 1 (each step keeps 1 - lr * weight_decay "
                         f"of the parameters), got weight_decay {weight_decay} at lr {lr}")


class EggrollES:
    """EGGROLL (or another strategy) as one ask/tell object over `model`.

    One batched step, by hand:

        population = es.ask()                     # this step's noise
        population.set_rows(member_ids)           # member of each row of dim 0; layouts: population_rows
        scores = score(model(inputs))             # ONE forward for the whole population, under torch.no_grad()
        stats = es.tell(scores)                   # shape fitness (`fitness`), update, next step

    Fastest layout for MLPs: one row per member holding all of its samples (x: [N, B, features], rows arange(N));
    with x = X.expand(N, -1, -1) the first layer's base matmul runs once. Conv and embedding inputs take the flat
    member-major layout ([N·B, ...], rows population_rows(population, B)): equal runs of a member cost the same.

    Selection (in place): every parameter with requires_grad=True, narrowed by `target_modules` (module names: list
    of suffixes or a regex) and `param_filter(name, param) -> bool`; frozen parameters are never touched. `rank` is
    the rank of EGGROLL's noise; give `strategy=` for another strategy. `fitness` is one of fitness.FITNESS_METHODS
    ("none" takes the scores as already shaped fitness). The step counter is `step_index`.
    """

    def __init__(self, model: nn.Module, *, population_size: int, sigma: float, lr: float, rank: int = 1,
                 adapter_rank: int | str | None = None, strategy: Strategy | None = None, antithetic: bool = True,
                 noise_reuse: int = 1, seed: int = 0, target_modules: list[str] | str | None = None,
                 param_filter: Callable[[str, nn.Parameter], bool] | None = None, momentum: float = 0.0,
                 weight_decay: float = 0.0, fitness: str = "group_centered", sigma_scale: str = "absolute",
                 optimizer: str = "sgd"):
        check_fitness_method(fitness)
        check_optimizer(lr, momentum, weight_decay)
        self.model, self.fitness, self.step_index, self.merged = model, fitness, 0, False
        self.population = Population(population_size=population_size, sigma=sigma, rank=rank, antithetic=antithetic,
                                     seed=seed, noise_reuse=noise_reuse)
        optimizer_settings = dict(lr=lr, momentum=momentum, weight_decay=weight_decay)
        if adapter_rank is None and (sigma_scale, optimizer) != ("absolute", "sgd"):
            raise ValueError("sigma_scale and optimizer are adapter-mode settings (adapter_rank=...)")
        if adapter_rank is None:
            if strategy is not None and rank != 1:
                raise ValueError(f"rank={rank} is EGGROLL's default strategy setting; with strategy= give the rank to "
                                 "the strategy, e.g. EggrollStrategy(rank=4)")
            self.strategy = EggrollStrategy(rank) if strategy is None else strategy
            self.targets = select_targets(model, target_modules, param_filter)
            self.layers = {}
            self.backend = InPlaceBackend(model, self.population, self.strategy, self.targets, **optimizer_settings)
        else:
            if strategy is not None or param_filter is not None:
                raise ValueError("adapter mode (adapter_rank=...) is EGGROLL on the nn.Linear layers that "
                                 "target_modules selects; strategy= and param_filter= need the in-place mode "
                                 "(adapter_rank=None)")
            self.strategy, self.targets = EggrollStrategy(rank), {}
            self.layers = attach_eggroll(model, self.population, target_modules, adapter_rank)
            self.backend = AdapterBackend(model, self.layers, self.population, sigma_scale=sigma_scale,
                                          optimizer=optimizer, **optimizer_settings)

    @classmethod
    def from_config(cls, model: nn.Module, es, seed: int) -> EggrollES:
        """The ES of a run (adapter mode): `es` is the run config's `es` section (config.ESConfig)."""
        return cls(model, population_size=es.population_size, sigma=es.sigma, lr=es.lr, rank=es.rank,
                   adapter_rank=es.adapter_rank, antithetic=es.antithetic, noise_reuse=es.noise_reuse, seed=seed,
                   target_modules=es.target_modules, momentum=es.momentum, weight_decay=es.weight_decay,
                   fitness=es.fitness, sigma_scale=es.sigma_scale, optimizer=es.optimizer)

    def ask(self) -> Population:
        """Begin step `step_index`: the population now carries this step's noise (rows: set them per forward)."""
        if self.merged:
            raise RuntimeError("this EggrollES was merged back into its model (es.merge()); build a new one to "
                               "train on")
        self.population.set_step(self.step_index)
        self.backend.begin_step()
        return self.population

    def evaluate(self, score_population: Callable[[nn.Module, Population], torch.Tensor]) -> torch.Tensor:
        """`score_population(model, population)` at this step, without gradients; rows are reset afterwards."""
        population = self.ask()
        try:
            with torch.no_grad():
                return score_population(self.model, population)
        finally:
            population.set_rows(None)

    def step(self, fitness_fn: Callable[[nn.Module], float]) -> dict[str, float]:
        """One whole step scored member by member: `fitness_fn(model)` runs once per member with that member's
        parameters written into the model (no gradients), then `tell`. The model is its exact centre again before
        the update, even when `fitness_fn` raises. Returns the raw scores' mean and max and tell's statistics."""
        population = self.ask()
        values = []
        with self.backend.members() as apply, torch.no_grad():
            for member in range(population.population_size):
                apply(member)
                values.append(float(fitness_fn(self.model)))
        scores = torch.tensor(values, dtype=torch.float64)
        stats = self.tell(scores)
        return {"fitness_mean": float(scores.mean()), "fitness_max": float(scores.max()), **stats}

    def tell(self, scores: torch.Tensor, prompt_ids: torch.Tensor | None = None) -> dict[str, float]:
        """Shape `scores` into fitness, update the parameters (or adapters) and move to the next step."""
        scores = torch.as_tensor(scores).to(torch.float32).cpu()
        N = self.population.population_size
        if scores.dim() not in (1, 2) or scores.shape[0] != N:
            raise ValueError(f"scores have shape {tuple(scores.shape)}; expected [{N}] (one per member) or "
                             f"[{N}, J] (J prompts per member, with prompt_ids)")
        if not bool(torch.isfinite(scores).all()):  # one NaN would silently corrupt every parameter
            raise ValueError("scores contain NaN or inf; check the fitness / reward function")
        self.backend.check_coverage()
        grid = scores if scores.dim() == 2 else scores[:, None]                     # [N, J]
        ids = torch.zeros(grid.shape, dtype=torch.long) if prompt_ids is None else torch.as_tensor(prompt_ids)
        fitness = shape_fitness(grid, ids.reshape(grid.shape), self.fitness)        # [N]
        stats = self.backend.update(fitness)
        self.step_index += 1
        return stats

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters (in place) or adapters, optimizer state and the step: everything a resumed run needs."""
        return {**self.backend.state_dict(), "es.step": torch.tensor(self.step_index)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.backend.load_state_dict(state)
        self.step_index = int(state["es.step"])

    def merge(self) -> nn.Module:
        """The plain model back: hooks removed (in place), or every ΔW merged into its nn.Linear (adapter mode).
        The ES object is not usable afterwards."""
        self.merged = True
        return self.backend.detach()


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
