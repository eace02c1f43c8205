"""Integer EGGROLL for EGG: int8 low-rank population noise, sign fitness, and the thresholded ±1 weight update.

The paper's discrete update (arXiv 2511.16652, EGG section; "Q-EGGROLL" in the authors' nano-egg), in our words:
- Noise: for every matrix, pair k of the population draws A_k [out, r], B_k [in, r] ~ round(16·N(0, 1)) as int8,
  from the project's counter-based keys (`noise.noise_seed`: seed, step // noise_reuse, matrix index) so nothing
  is stored. Antithetic members 2k and 2k+1 use (+A_k, B_k) and (−A_k, B_k) (`noise.member_pairs`).
- Fitness: each pair votes f_k = sign(score_2k − score_2k+1) ∈ {−1, 0, +1} (the score is the member's integer
  log2-likelihood of its text window). Only the order inside a pair matters, so no float normalisation is needed.
- Update: Z = Σ_k f_k A_k B_kᵀ (int32). Under the null hypothesis (votes unrelated to the noise) Z/(256·√(n·r)) is
  about standard normal, n = number of non-zero votes. A weight moves by sign(Z) — one int8 step, the size of the
  perturbation at sigma_shift 4 — only where |Z| passes the two-sided z-test at level α, so about a fraction α of
  the weights would move by chance and the rest hold still. α decays from `alpha` to `alpha_end`.
"""

from __future__ import annotations

import math
from statistics import NormalDist

import torch

from ..noise import layer_noise, member_pairs, noise_seed, num_pairs
from . import intops

PairNoise = dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (A [P, out, r], B [P, in, r]) int8


def pair_noise(shapes: dict[str, tuple[int, int]], seed: int, step: int, population_size: int, rank: int,
               noise_reuse: int) -> PairNoise:
    """Every matrix's int8 factors for the population's P = N/2 antithetic pairs at `step`.

    The Gaussian draw comes from `noise.layer_noise` (one draw per matrix, keyed by its index in `shapes`); it is
    turned into int8 once here, outside the forward.
    """
    pairs = num_pairs(population_size, antithetic=True)
    noise = {}
    for index, (name, (m, n)) in enumerate(shapes.items()):
        a, b = layer_noise(noise_seed(seed, step, noise_reuse, index), pairs, m, n, rank, "cpu")
        noise[name] = (intops.saturate((a * intops.ONE).round()), intops.saturate((b * intops.ONE).round()))
    return noise


def member_noise(noise: PairNoise, population_size: int) -> PairNoise:
    """Per-member factors for the batched forward: row n gets (s_n A_pair(n), B_pair(n)), s_n = ±1."""
    pair, sign = member_pairs(population_size, antithetic=True)
    sign = sign.to(torch.int8).view(-1, 1, 1)
    return {name: (a[pair] * sign, b[pair]) for name, (a, b) in noise.items()}


def pair_fitness(scores: torch.Tensor) -> torch.Tensor:
    """scores [N] int (member 2k and 2k+1 antithetic) -> votes [N/2] int32 in {−1, 0, +1}."""
    return torch.sign(scores[0::2] - scores[1::2]).to(torch.int32)


def alpha_at(step: int, alpha: float, alpha_end: float, decay_steps: int) -> float:
    """Fraction of weights the z-test lets move by chance: 1/α interpolates linearly from `alpha` to `alpha_end`
    over `decay_steps` (nano-egg's hyperbolic decay), then stays at `alpha_end`."""
    if decay_steps <= 0:
        return alpha
    frac = min(step / decay_steps, 1.0)
    return 1.0 / (1.0 / alpha + frac * (1.0 / alpha_end - 1.0 / alpha))


def z_threshold(alpha: float) -> int:
    """The two-sided z-test's critical value at level α, times 256, as an integer (α = 1 gives 0: all move)."""
    return 0 if alpha >= 1.0 else round(256 * NormalDist().inv_cdf(1.0 - alpha / 2.0))


def update(params: dict[str, torch.Tensor], noise: PairNoise, votes: torch.Tensor, z256: int
           ) -> tuple[dict[str, torch.Tensor], int]:
    """The integer step: every weight moves by at most ±1 and stays in [-127, 127].

    votes [P] int32, z256 = `z_threshold(alpha)`. Returns the new parameters and how many weights moved.
    """
    voters = int((votes != 0).sum())
    if voters == 0:
        return params, 0
    new, moved = {}, 0
    for name, w in params.items():
        a, b = noise[name]                                   # [P, m, r], [P, n, r]
        rank = a.shape[-1]
        # threshold on |Z|: z · 256 · √(n·r), the √ taken in integers at 1/16 resolution
        threshold = (z256 * math.isqrt(voters * rank * 256)) >> 4
        fa = (a.to(torch.int32) * votes.view(-1, 1, 1)).permute(1, 0, 2).reshape(a.shape[1], -1)  # [m, P·r]
        z = fa @ b.to(torch.int32).permute(0, 2, 1).reshape(-1, b.shape[1])                      # [m, n]
        step = torch.sign(z) * (z.abs() >= max(threshold, 1))
        new[name] = intops.saturate(w.to(torch.int32) + step)
        moved += int((new[name] != w).sum())
    return new, moved
