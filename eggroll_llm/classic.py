"""The classic Gaussian strategies with a per-parameter σ: simple ES with elite selection, and separable NES.

Both sample member i as θ + σ_j z_ij with z standard normal and σ_j a per-parameter step size that adapts after
every generation, and both move the centre by a weighted sum of the members' steps. In the engine's terms
(strategy.py) the state is the ratio r_j = σ_j / (σ · scale) (1 at the start; σ is `EggrollES(sigma=...)`, scale the
target's sigma_scale), the noise is ε = r ⊙ z, and the ascent direction is the centre's step itself,

    g = σ Σ_k w_k ε_k     (θ ← θ + lr · g: with SGD at lr 1 the textbook update; another lr damps it),

so the engine's optimizer, both scoring paths and both modes apply unchanged. In adapter mode the step is folded
into the adapter (exact with `adapter_rank="full"`).

- `SimpleES` (Rechenberg 1973; evosax's SimpleES): the best `elite_ratio` of the members, equally weighted, give
  the new centre, and σ_j ← (1 − c_σ) σ_j + c_σ · √(mean over the elite of (x_ij − θ_j)²).
- `SNES` (separable NES, Schaul et al. 2011; Wierstra et al. 2014 §5): rank utilities
  u = max(0, log(λ/2 + 1) − log rank) / Σ − 1/λ, the centre steps by σ Σ u_i z_i, and
  σ_j ← σ_j · exp(η_σ / 2 · Σ u_i (z_ij² − 1)), η_σ = (3 + ln d) / (5 √d) over all d parameters.

Both take `EggrollES(..., strategy="simple_es" | "snes", lr=1.0)`; fitness shaping does not change them (they use
ranks). Mirrored sampling (`antithetic=True`) works too: a pair's members share z with opposite signs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .strategy import DenseNoise, Noise, Strategy, Target, gaussian, weighted_sum


def ranks(fitness: Tensor) -> Tensor:
    """0-based rank of each member, best (highest fitness) first; ties keep population order → [N] long."""
    order = torch.argsort(fitness, descending=True, stable=True)
    return torch.empty_like(order).scatter_(0, order, torch.arange(fitness.numel()))


class SeparableGaussian(Strategy):
    """Shared part of SimpleES and SNES: dense Gaussian noise scaled by the per-parameter ratio r (the state), the
    centre's step σ Σ_k w_k ε_k, and member utilities u [N] from `utilities(fitness)`; subclasses adapt r."""

    antithetic = False

    def __init__(self) -> None:
        self.ratio: dict[str, Tensor] = {}      # target name -> r = σ_j / (σ · scale), the target's shape, fp32
        self.es = None

    def setup(self, es) -> None:
        if es.population.noise_reuse != 1:
            raise ValueError(f"{type(self).__name__} adapts σ every step, so each step needs fresh noise: set "
                             f"noise_reuse=1 (got {es.population.noise_reuse})")
        self.es = es
        self.ratio = {name: torch.ones(t.shape, device=t.param.device) for name, t in es.targets.items()}

    def utilities(self, fitness: Tensor) -> Tensor:
        raise NotImplementedError

    def noise(self, target: Target, key: int, num_pairs: int) -> Noise:
        return DenseNoise(gaussian(target, key, num_pairs).E.mul_(self.ratio[target.name]))

    def weights(self, fitness: Tensor, pairs: Tensor, signs: Tensor, num_pairs: int) -> Tensor:
        u = self.utilities(fitness) * signs                                  # a mirrored member steps along −ε
        return torch.zeros(num_pairs, dtype=torch.float32).index_add_(0, pairs, u.to(torch.float32))

    def gradient(self, target: Target, noise: Noise, weights: Tensor) -> Tensor:
        return self.es.population.sigma * weighted_sum(target, noise, weights)

    def pair_moments(self, fitness: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """(Σ_i u_i over each pair [P], Σ_{i in pair} u_i z_k² per target): the second moments of the members' z,
        weighted by utility (a pair's two members share z², whatever their signs)."""
        pop = self.es.population
        u = self.utilities(fitness).to(torch.float32)
        per_pair = torch.zeros(pop.num_pairs).index_add_(0, pop.pairs, u)
        moments = {}
        for name, t in self.es.targets.items():
            E = pop.noise(t).E                                                  # [P, *shape] = r ⊙ z
            moments[name] = torch.tensordot(per_pair.to(E.device), E * E, dims=1) / self.ratio[name].square()
        return per_pair, moments

    def state_dict(self) -> dict[str, Tensor]:
        return {f"ratio.{name}": r.cpu().contiguous() for name, r in self.ratio.items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, r in self.ratio.items():
            saved = state.get(f"ratio.{name}")
            if saved is None or saved.shape != r.shape:
                raise ValueError(f"state has no {type(self).__name__} step sizes for {name} (strategy.ratio.{name});"
                                 " load a checkpoint of the same strategy over the same targets")
            r.copy_(saved)


class SimpleES(SeparableGaussian):
    """Gaussian ES with elite selection: the centre moves to the mean of the best `elite_ratio` of the members, and
    each σ_j follows the spread of the elite along parameter j (rate `c_sigma`)."""

    def __init__(self, elite_ratio: float = 0.5, c_sigma: float = 0.1):
        if not 0 < elite_ratio <= 1 or not 0 <= c_sigma <= 1:
            raise ValueError(f"SimpleES needs 0 < elite_ratio <= 1 and 0 <= c_sigma <= 1, got {elite_ratio}, "
                             f"{c_sigma}")
        super().__init__()
        self.elite_ratio, self.c_sigma = elite_ratio, c_sigma

    def utilities(self, fitness: Tensor) -> Tensor:
        elites = max(1, int(self.elite_ratio * fitness.numel()))
        return (ranks(fitness) < elites).to(torch.float32) / elites

    def update(self, fitness: Tensor) -> None:
        _, moments = self.pair_moments(fitness)     # Σ_elite (x_j − θ_j)² / (σ scale r_j)² / elites
        for name, r in self.ratio.items():
            r.mul_(1 - self.c_sigma + self.c_sigma * moments[name].sqrt())

    def __repr__(self) -> str:
        return f"SimpleES(elite_ratio={self.elite_ratio}, c_sigma={self.c_sigma})"


class SNES(SeparableGaussian):
    """Separable NES: rank utilities, the natural-gradient step of the centre, and a multiplicative σ_j update at
    rate `lr_sigma` (default (3 + ln d) / (5 √d), d the number of parameters the ES perturbs)."""

    def __init__(self, lr_sigma: float | None = None):
        if lr_sigma is not None and not lr_sigma > 0:
            raise ValueError(f"SNES lr_sigma must be > 0, got {lr_sigma}")
        super().__init__()
        self.lr_sigma = lr_sigma

    def setup(self, es) -> None:
        super().setup(es)
        if self.lr_sigma is None:
            d = sum(t.param.numel() for t in es.targets.values())
            self.lr_sigma = (3 + math.log(d)) / (5 * math.sqrt(d))

    def utilities(self, fitness: Tensor) -> Tensor:
        n = fitness.numel()
        raw = (math.log(n / 2 + 1) - torch.log1p(ranks(fitness).to(torch.float64))).clamp_min(0)
        return (raw / raw.sum() - 1 / n).to(torch.float32)

    def update(self, fitness: Tensor) -> None:
        per_pair, moments = self.pair_moments(fitness)
        total = float(per_pair.sum())               # Σ u_i (z² − 1) = Σ u_i z² − Σ u_i
        for name, r in self.ratio.items():
            r.mul_(torch.exp(0.5 * self.lr_sigma * (moments[name] - total)))

    def __repr__(self) -> str:
        return f"SNES(lr_sigma={self.lr_sigma})"
