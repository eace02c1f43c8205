"""Full-rank OpenAI-ES (Salimans et al. 2017): the baseline EGGROLL is compared with, behind EggrollES's interface.

Member i perturbs each target matrix W [m, n] by s_i σ E_i, E_i a dense standard-normal [m, n] matrix, and the
update (1/σ divided out, as in es.py) is

    g = 1/N Σ_i f_i s_i E_i = 1/N Σ_k c_k E_k,     Δ ← (1 − lr·wd) Δ + lr · (momentum-adjusted g),

with c_k the antithetic coefficients of fitness.py and Δ a dense fp32 delta (EGGROLL's `adapter_rank: full`).
This is the estimator EGGROLL approximates with rank-r noise A_i B_iᵀ (arXiv 2511.16652). What it costs, and why
it is kept only as a baseline: N/2·m·n noise values per layer and step instead of N/2·(m+n)·r, and a per-row
gather of [rows, m, n] plus one full-width bmm in every forward instead of two thin ones. Everything else —
targets, layer indices, noise keys, antithetic pairs, fitness handling, momentum state — is shared with
EggrollES, so a comparison differs only in the structure of the noise.

    es = OpenAIES(model, population_size=64, sigma=0.05, lr=0.05)   # drop-in for EggrollES(model, ...)
    for _ in range(steps):
        es.tell(es.evaluate(score_population))                      # score_population(model, population) -> [N]

Rows of a forward carry whole sequences (x: [rows, seq, n]); give each member one row holding all of its inputs
along the sequence axis, because the gathered noise costs rows·m·n.
"""

from __future__ import annotations

import torch
from torch import nn

from .es import EggrollES, ESUpdater
from .fitness import antithetic_coefficients, check_fitness_method
from .noise import PopulationError, noise_seed
from .perturbed import EggrollLinear, Population, attach_eggroll


def dense_noise(seed_int: int, num_pairs: int, m: int, n: int, device: torch.device | str) -> torch.Tensor:
    """E [P, m, n], fp32 standard normal: one draw per layer for the whole population, from its key."""
    generator = torch.Generator(device=device).manual_seed(seed_int)
    return torch.randn(num_pairs, m, n, generator=generator, device=device, dtype=torch.float32)


class DenseNoiseLinear(EggrollLinear):
    """A frozen nn.Linear plus a dense fp32 delta plus each row's full-rank noise: y = x Wᵀ + x Δᵀ + s_i σ x E_iᵀ.

    An EggrollLinear with `adapter_rank: full` (same delta buffer, fp32 masters, export path) whose member noise is
    dense instead of low rank.
    """

    def __init__(self, base: nn.Linear, layer_index: int, population: Population):
        super().__init__(base, layer_index, population, adapter_rank="full")
        self._noise_cache: tuple[tuple, torch.Tensor | None] = ((), None)
        self._row_noise_cache: tuple[tuple, torch.Tensor | None] = ((), None)

    def noise(self, device: torch.device | str) -> torch.Tensor:
        """E [P, m, n] fp32 of the population's current step; drawn once per noise key and device."""
        pop = self.population
        key = (noise_seed(pop.seed, pop.step, pop.noise_reuse, self.layer_index), torch.device(device))
        if self._noise_cache[0] != key:
            self._noise_cache = ((), None)  # let the previous step's draw go before the next is made
            self._noise_cache = (key, dense_noise(key[0], pop.num_pairs, self.out_features, self.in_features, device))
        return self._noise_cache[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)                                   # x: [batch, seq, n] or [batch, n] -> y: [.., m]
        delta = self._adapter(x.dtype, x.device)           # (Δ [m, n],) in the compute dtype, None while zero
        if self.population.rows is None:
            self._row_noise_cache = ((), None)
            return y if delta is None else y + nn.functional.linear(x, delta[0])
        per_row = self._row_weights(x.dtype, x.device, delta is not None)   # [batch, n, m]
        batch, m, n = x.shape[0], y.shape[-1], x.shape[-1]
        if per_row.shape[0] != batch:
            raise PopulationError(f"{per_row.shape[0]} member ids set but the batch has {batch} rows; call "
                                  "population.set_rows with one member id per batch row whenever the batch changes")
        # x: [batch, seq, n] @ (Δ + s_i σ E_i)ᵀ [batch, n, m] -> [batch, seq, m], added to y
        return torch.baddbmm(y.reshape(batch, -1, m), x.reshape(batch, -1, n), per_row).view(y.shape)

    def _row_weights(self, dtype: torch.dtype, device: torch.device, with_delta: bool) -> torch.Tensor:
        """(Δ + s_i σ E_i)ᵀ of each batch row → [batch, n, m]; regathered only when the rows, step or Δ change.

        Δ rides along in the per-row matrices, so a perturbed forward costs the base matmul plus one bmm (the
        baseline's inherent extra work), not a third full-width matmul for the delta.
        """
        key = (self.population.version, dtype, device, self._adapter_cache[0] if with_delta else None)
        if self._row_noise_cache[0] != key:
            self._row_noise_cache = ((), None)
            pairs, scales = self.population.row_factors(device)               # [batch], [batch] (= s_i σ, rank 1)
            E = self.noise(device)[pairs] * scales[:, None, None]             # fp32 [batch, m, n]
            if with_delta:
                E += self.delta.to(device)
            self._row_noise_cache = (key, E.transpose(1, 2).to(dtype).contiguous())
        return self._row_noise_cache[1]


class DenseESUpdater(ESUpdater):
    """ESUpdater for DenseNoiseLinear layers: the OpenAI-ES step; momentum state and checkpoints as ESUpdater's."""

    @torch.no_grad()
    def step(self, fitness: torch.Tensor) -> dict[str, float]:
        pop = self.population
        fitness = self.checked(fitness)
        coeffs = antithetic_coefficients(fitness, pop.pairs, pop.signs, pop.num_pairs) / pop.population_size  # [P]
        keep = 1.0 - self.lr * self.weight_decay
        sq_norm = 0.0
        for name, layer in self.layers.items():
            E = layer.noise(layer.delta.device)                               # [P, m, n]
            g = torch.tensordot(coeffs.to(E.device), E, dims=1)               # [m, n]
            if self.momentum:  # velocity ← μ·velocity + g (heavy ball), as ESUpdater's full-rank path
                g = self.velocity[name][0] * self.momentum + g if name in self.velocity else g
                self.velocity[name] = (g,)
            before = layer.delta.clone()
            layer.delta.copy_(layer.delta * keep + self.lr * g)
            sq_norm += float((layer.delta - before).pow(2).sum())
        return {"update_norm": sq_norm ** 0.5, "fitness_std": float(fitness.std()) if fitness.numel() > 1 else 0.0}


class OpenAIES(EggrollES):
    """OpenAI-ES on any nn.Module built from nn.Linear; same constructor keywords and ask/tell API as EggrollES
    (evaluate/tell are inherited; only the layers and the updater differ).

    `score_population(model, population) -> Tensor[N]` runs the whole population in one batched forward after
    `population.set_rows(member_id_of_each_row)`, exactly as for EggrollES.
    """

    def __init__(self, model: nn.Module, *, population_size: int, sigma: float, lr: float, antithetic: bool = True,
                 noise_reuse: int = 1, seed: int = 0, target_modules: list[str] | str | None = None,
                 momentum: float = 0.0, weight_decay: float = 0.0, fitness: str = "group_centered"):
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}")
        if weight_decay < 0 or lr * weight_decay > 1:
            raise ValueError(f"weight_decay must be >= 0 with lr * weight_decay <= 1, got {weight_decay} (lr {lr})")
        check_fitness_method(fitness)
        # EggrollES.__init__ is deliberately not called: dense-noise layers and updater replace its low-rank ones.
        self.model, self.fitness, self.step = model, fitness, 0
        # rank 1 makes Population's row scale s_i σ/√r equal to s_i σ; the rank is otherwise unused here.
        self.population = Population(population_size=population_size, sigma=sigma, rank=1, antithetic=antithetic,
                                     seed=seed, noise_reuse=noise_reuse)
        # attach_eggroll chooses the targets, so both baselines perturb the same layers with the same layer indices
        # (hence the same noise keys); its low-rank wrappers are then swapped for dense-noise ones.
        self.layers: dict[str, DenseNoiseLinear] = {}
        for name, layer in attach_eggroll(model, self.population, target_modules, adapter_rank=1).items():
            parent, _, child = name.rpartition(".")
            self.layers[name] = DenseNoiseLinear(layer.base, layer.layer_index, self.population)
            setattr(model.get_submodule(parent), child, self.layers[name])
        self.updater = DenseESUpdater(self.layers, self.population, lr=lr, momentum=momentum,
                                      weight_decay=weight_decay)

