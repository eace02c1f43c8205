"""Full-rank OpenAI-ES (Salimans et al. 2017), the baseline EGGROLL is compared with, as a generic-layer strategy.

Member i perturbs every target parameter θ by s_i σ E_k, E_k dense standard normal of θ's shape, and the update
(1/σ divided out, as in es.py) is

    g = 1/N Σ_i f_i s_i E_{k(i)},     θ ← θ + lr · (momentum-adjusted g) − lr·wd·θ.

This is the estimator EGGROLL approximates with rank-r noise A_k B_kᵀ on matrices (arXiv 2511.16652). What it
costs, and why it is kept only as a baseline: N/2·m·n noise values per matrix and step instead of N/2·(m+n)·r, and a
per-member [m, n] noise matrix in every batched forward (one full-width bmm) instead of two thin matmuls. Everything
else (targets, parameter indices, noise keys, antithetic pairs, fitness shaping, optimizer) is EggrollES's, so a
comparison differs only in the structure of the noise.

    es = OpenAIES(model, population_size=64, sigma=0.05, lr=0.05)   # drop-in for EggrollES(model, ...)
    es.step(fitness_fn)                                             # or es.tell(es.evaluate(score_population))
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from .es import EggrollES
from .strategy import OpenAIStrategy

__all__ = ["OpenAIES", "OpenAIStrategy"]


class OpenAIES(EggrollES):
    """EggrollES with OpenAIStrategy, in place: the same constructor keywords (but no rank) and the same API."""

    def __init__(self, model: nn.Module, *, population_size: int, sigma: float, lr: float, antithetic: bool = True,
                 noise_reuse: int = 1, seed: int = 0, target_modules: list[str] | str | None = None,
                 param_filter: Callable[[str, nn.Parameter], bool] | None = None, momentum: float = 0.0,
                 weight_decay: float = 0.0, fitness: str = "group_centered"):
        super().__init__(model, population_size=population_size, sigma=sigma, lr=lr, strategy=OpenAIStrategy(),
                         antithetic=antithetic, noise_reuse=noise_reuse, seed=seed, target_modules=target_modules,
                         param_filter=param_filter, momentum=momentum, weight_decay=weight_decay, fitness=fitness)
