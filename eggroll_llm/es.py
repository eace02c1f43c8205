"""The ES core: `EggrollES`, one ask/tell engine that owns the step, the noise, the fitness shaping and the update,
for any nn.Module.

docs/design.md §1: member i of a step scores the parameters θ + s_i σ ε_k (antithetic partners share ε_k with signs
±1), ε drawn by the strategy from the key (seed, step // noise_reuse, target index), and the step moves θ by lr times
the fitness-weighted noise (1/σ divided out). One engine for every strategy and optimizer:

- the step's noise is drawn ONCE per target and key (`population.noise(target)`), and the batched forward, the
  per-member writes and the update all read that draw;
- the strategy (strategy.py: `eggroll` low-rank, `openai_es` dense, or a subclass) draws the noise and weighs the
  directions; the fitness shaping (fitness.py) and the optimizer (optim.py) are objects or names;
- the only difference between the two modes is where θ lives: the module's parameters (in place, the default:
  inplace.py), or an fp32 adapter ΔW beside each frozen nn.Linear W (`adapter_rank=R` or "full":
  adapter_backend.py; the LLM trainer's default). `sigma_scale="weight_rms"` gives each target the noise σ·RMS(W)
  and the step lr·RMS(W) in both.

Two ways to score a step:

    es = EggrollES(model, population_size=64, sigma=0.05, lr=0.05)
    metrics = es.step(fitness_fn)          # fitness_fn(model) -> float, called once per member under its noise

    scores = es.evaluate(score_population) # score_population(model, population) -> [N]: ONE batched forward,
    stats = es.tell(scores)                #   after population.set_rows(member id of each row of dim 0)

`tell` also takes scores [N, J] with `prompt_ids` [N, J] (the LLM trainer's layout: group-centred fitness compares
members on equal prompts). State (parameters or adapters, optimizer state, step) is explicit and checkpointable, in
the ask/tell style of evosax; `merge()` hands back the plain model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from .adapter_backend import AdapterStore
from .es_layers import select_targets
from .fitness import FitnessShaping, resolve_shaping, shape_fitness
from .inplace import InPlaceStore
from .optim import Optimizer, resolve_optimizer
from .perturbed import Population, attach_eggroll, target_linears
from .strategy import LowRankNoise, Strategy, Target, member_noise, resolve_strategy

SIGMA_SCALES = ("absolute", "weight_rms")


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

    Selection (in place): every parameter with requires_grad=True (or every one, `include_frozen`), narrowed by
    `target_modules` (module names: list of suffixes or a regex) and `param_filter(name, param) -> bool`. Adapter
    mode (`adapter_rank`): the nn.Linear layers `target_modules` selects (default: those in the transformer blocks).
    `strategy`: a name in strategy.STRATEGIES, `package.module:Class` or a Strategy (default: EGGROLL at `rank`);
    `antithetic` None takes the strategy's default (mirrored pairs for EGGROLL / OpenAI-ES, independent samples for
    the classic family).
    `fitness`: a name in fitness.FITNESS_METHODS or a callable (scores [N, J], prompt_ids [N, J]) -> [N] ("none"
    takes the scores as already shaped). `optimizer`: "sgd" / "adam" (with lr, momentum, weight_decay) or an
    optim.Optimizer. `decay_to_base` (in place): weight_decay pulls θ toward the starting weights instead of 0 (an
    adapter's decay already pulls ΔW toward 0, i.e. toward the base). The step counter is `step_index`.
    """

    def __init__(self, model: nn.Module, *, population_size: int, sigma: float, lr: float, rank: int = 1,
                 adapter_rank: int | str | None = None, strategy: Strategy | str | None = None,
                 antithetic: bool | None = None, noise_reuse: int = 1, seed: int = 0,
                 target_modules: list[str] | str | None = None,
                 param_filter: Callable[[str, nn.Parameter], bool] | None = None, momentum: float = 0.0,
                 weight_decay: float = 0.0, fitness: str | FitnessShaping = "group_centered",
                 sigma_scale: str = "absolute", optimizer: str | Optimizer = "sgd", include_frozen: bool = False,
                 decay_to_base: bool = False):
        if sigma_scale not in SIGMA_SCALES:
            raise ValueError(f"sigma_scale must be one of {', '.join(SIGMA_SCALES)}, got {sigma_scale!r}")
        if strategy is not None and not isinstance(strategy, str) and rank != 1:
            raise ValueError(f"rank={rank} is EGGROLL's default strategy setting; with strategy= give the rank to "
                             "the strategy, e.g. EggrollStrategy(rank=4)")
        self.fitness = fitness
        self.shaping = resolve_shaping(fitness)
        self.optimizer = resolve_optimizer(optimizer, lr, momentum, weight_decay)
        self.strategy = resolve_strategy(strategy, rank)
        self.model, self.step_index, self.merged = model, 0, False
        antithetic = self.strategy.antithetic if antithetic is None else antithetic
        self.population = Population(population_size=population_size, sigma=sigma, rank=rank, antithetic=antithetic,
                                     seed=seed, noise_reuse=noise_reuse, strategy=self.strategy)
        if adapter_rank is None:
            self.layers = {}
            self.targets = select_targets(model, target_modules, param_filter, include_frozen)
            self.store = InPlaceStore(model, self.population, self.targets, decay_to_base)
        else:
            if param_filter is not None:
                raise ValueError("adapter mode (adapter_rank=...) adapts the nn.Linear layers that target_modules "
                                 "selects; param_filter= needs the in-place mode (adapter_rank=None)")
            self.layers = attach_eggroll(model, self.population, target_modules, adapter_rank)
            self.targets = {layer.target.name: layer.target for layer in self.layers.values()}
            self.store = AdapterStore(model, self.layers)
        if sigma_scale == "weight_rms":  # one σ and one lr mean the same relative change on every target
            for t in self.targets.values():
                t.scale = float(t.param.detach().float().pow(2).mean().sqrt())
        self.strategy.setup(self)

    @classmethod
    def from_config(cls, model: nn.Module, es, seed: int) -> EggrollES:
        """The ES of a run: `es` is the run config's `es` section (config.ESConfig). adapter_rank null = in place,
        on the weights and biases of the modules `target_modules` names (default: the nn.Linear layers of the
        transformer blocks, as in adapter mode; '.*' for every parameter, as full-parameter ES perturbs them)."""
        targets, param_filter = es.target_modules, None
        if es.adapter_rank is None and targets in (None, "all-linear"):
            modules = {name for name, _ in target_linears(model, targets)}
            targets, param_filter = None, (lambda name, p: name.rpartition(".")[0] in modules)
        return cls(model, population_size=es.population_size, sigma=es.sigma, lr=es.lr, rank=es.rank,
                   adapter_rank=es.adapter_rank, strategy=es.strategy, antithetic=es.antithetic,
                   noise_reuse=es.noise_reuse, seed=seed, target_modules=targets, param_filter=param_filter,
                   momentum=es.momentum, weight_decay=es.weight_decay, fitness=es.fitness,
                   sigma_scale=es.sigma_scale, optimizer=es.optimizer, include_frozen=True,
                   decay_to_base=es.decay_to_base)

    @property
    def in_place(self) -> bool:
        return isinstance(self.store, InPlaceStore)

    def ask(self) -> Population:
        """Begin step `step_index`: the population now carries this step's noise (rows: set them per forward)."""
        if self.merged:
            raise RuntimeError("this EggrollES was merged back into its model (es.merge()); build a new one to "
                               "train on")
        self.population.set_step(self.step_index)
        self.store.begin_step()
        return self.population

    def evaluate(self, score_population: Callable[[nn.Module, Population], torch.Tensor]) -> torch.Tensor:
        """`score_population(model, population)` at this step, without gradients; rows are reset afterwards."""
        population = self.ask()
        try:
            with torch.no_grad():
                return score_population(self.model, population)
        finally:
            population.set_rows(None)

    @contextmanager
    def members(self) -> Iterator[Callable[[int], None]]:
        """`apply(i)` writes member i's parameters θ + s_i σ ε_k into the model (in adapter mode W + s_i σ ε_k, the
        layer adds ΔW itself) from a copy of the centre taken once on entry, never by subtracting the previous
        member's noise, which would drift; the exact centre is written back on exit, even when scoring raises."""
        self.store.check_member_writes()
        pop = self.population
        centre = {name: t.param.detach().clone() for name, t in self.targets.items()}
        writes = [(t, centre[name], pop.noise(t)) for name, t in self.targets.items()]
        pairs, signs = pop.pairs.tolist(), pop.signs.tolist()   # per member, as Python numbers

        @torch.no_grad()
        def apply(member: int) -> None:
            for target, kept, noise in writes:
                write_member(target, kept, noise, pairs[member], signs[member] * pop.sigma * target.scale)

        try:
            yield apply
        finally:
            with torch.no_grad():
                for name, t in self.targets.items():
                    t.param.copy_(centre[name])

    def step(self, fitness_fn: Callable[[nn.Module], float]) -> dict[str, float]:
        """One whole step scored member by member: `fitness_fn(model)` runs once per member with that member's
        parameters written into the model (no gradients), then `tell`. The model is its exact centre again before
        the update, even when `fitness_fn` raises. Returns the raw scores' mean and max and tell's statistics."""
        population = self.ask()
        values = []
        with self.members() as apply, torch.no_grad():
            for member in range(population.population_size):
                apply(member)
                values.append(float(fitness_fn(self.model)))
        scores = torch.tensor(values, dtype=torch.float64)
        stats = self.tell(scores)
        return {"fitness_mean": float(scores.mean()), "fitness_max": float(scores.max()), **stats}

    def tell(self, scores: torch.Tensor, prompt_ids: torch.Tensor | None = None) -> dict[str, float]:
        """Shape `scores` into fitness, update the parameters (or adapters) and move to the next step."""
        scores = torch.as_tensor(scores).to(torch.float32).cpu()
        pop = self.population
        N = pop.population_size
        if scores.dim() not in (1, 2) or scores.shape[0] != N:
            raise ValueError(f"scores have shape {tuple(scores.shape)}; expected [{N}] (one per member) or "
                             f"[{N}, J] (J prompts per member, with prompt_ids)")
        if not bool(torch.isfinite(scores).all()):  # one NaN would silently corrupt every parameter
            raise ValueError("scores contain NaN or inf; check the fitness / reward function")
        self.store.check_coverage()
        grid = scores if scores.dim() == 2 else scores[:, None]                     # [N, J]
        ids = torch.zeros(grid.shape, dtype=torch.long) if prompt_ids is None else torch.as_tensor(prompt_ids)
        fitness = shape_fitness(grid, ids.reshape(grid.shape), self.shaping)        # [N]
        self.strategy.update(fitness)            # adaptive strategies: σ, covariance (the step's noise stays cached)
        weights = self.strategy.weights(fitness, pop.pairs, pop.signs, pop.num_pairs)   # [P]
        t = self.step_index + 1
        with torch.no_grad():
            sq_norm = sum(self.store.apply(target, *self._gradient(target, weights), self.optimizer, t)
                          for target in self.targets.values())
        self.step_index += 1
        return {"update_norm": sq_norm ** 0.5,
                "fitness_std": float(fitness.std()) if fitness.numel() > 1 else 0.0}

    def _gradient(self, target: Target, weights: torch.Tensor):
        """The ascent direction g of one target, times its sigma_scale: (factors, coeffs) with g = Σ_k c_k A_k B_kᵀ
        when the strategy's estimator is the default one on low-rank noise (the adapter folds them as they are),
        else (dense g, None)."""
        noise = self.population.noise(target)
        if isinstance(noise, LowRankNoise) and type(self.strategy).gradient is Strategy.gradient:
            A = noise.A
            return noise, weights.to(A.device) / math.sqrt(A.shape[-1]) * target.scale
        g = self.strategy.gradient(target, noise, weights).to(torch.float32)
        if g.shape != target.shape:
            raise ValueError(f"{type(self.strategy).__name__}.gradient returned shape {tuple(g.shape)} for "
                             f"{target.name} of shape {tuple(target.shape)}")
        return (g * target.scale if target.scale != 1.0 else g), None

    def set_sigma(self, sigma: float) -> None:
        """σ of the next steps (a schedule); the ES gradient has 1/σ divided out, so the step size stays lr."""
        self.population.set_sigma(sigma)

    def set_lr(self, lr: float) -> None:
        if not lr > 0:
            raise ValueError(f"lr must be > 0, got {lr}")
        self.optimizer.lr = lr

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Parameters (in place) or adapters, optimizer state, the strategy's state (`strategy.*`: σ, covariance)
        and the step: everything a resumed run needs."""
        strategy = {f"strategy.{k}": v for k, v in self.strategy.state_dict().items()}
        return {**self.store.state_dict(), **self.optimizer.state_dict(), **strategy,
                "es.step": torch.tensor(self.step_index)}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.store.load_state_dict(state)
        self.optimizer.load_state_dict(state, {name: t.param.device for name, t in self.targets.items()})
        self.strategy.load_state_dict({k[len("strategy."):]: v for k, v in state.items() if k.startswith("strategy.")})
        self.step_index = int(state["es.step"])

    def trained_numel(self) -> int:
        """Numbers the ES trains: the target parameters (in place) or the adapters' fp32 values."""
        return self.store.trained_numel()

    def merge(self) -> nn.Module:
        """The plain model back: hooks removed (in place), or every ΔW merged into its nn.Linear (adapter mode).
        The ES object is not usable afterwards."""
        self.merged = True
        return self.store.detach()


def write_member(target: Target, centre: torch.Tensor, noise, pair: int, scale: float) -> None:
    """target.param ← centre + scale · ε_pair, computed from the kept centre in one fused op where the dtype allows."""
    p = target.param
    if p.dtype == torch.float32 and p.is_contiguous() and centre.is_contiguous():
        if isinstance(noise, LowRankNoise):
            A, B = noise
            m, n = target.matrix
            torch.addmm(centre.view(m, n), A[pair], B[pair].T, alpha=scale / math.sqrt(A.shape[-1]),
                        out=p.view(m, n))
        else:
            torch.add(centre, noise.E[pair], alpha=scale, out=p)
        return
    p.copy_((centre.float() + scale * member_noise(target, noise, pair)).to(p.dtype))


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
