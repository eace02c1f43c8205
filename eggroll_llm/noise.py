"""EGGROLL's population noise: counter-based keys, antithetic member pairs, one low-rank draw per layer.

docs/design.md §1: member i perturbs a target matrix W (m×n) by s_i (σ/√r) A_i B_iᵀ with A_i (m×r), B_i (n×r)
standard normal in fp32. Nothing is stored between steps: the factors are regenerated from a key
(seed, step // noise_reuse, layer), so the forward pass, the fold and every distributed worker see the same
noise without communicating it. One draw of shape [P, m+n, r] per layer covers the whole population
(P = number of distinct factor pairs), which is both fast and identical wherever it is regenerated.

These are pure functions; `perturbed.Population` caches their results for the step being generated.
"""

from __future__ import annotations

import hashlib

import torch


class PopulationError(ValueError):
    """A population setting that cannot work; the message names the field and the fix."""


def noise_seed(seed: int, step: int, noise_reuse: int, layer: int) -> int:
    """63-bit generator seed of one layer's noise at `step`; steps in the same noise_reuse window share it.

    A hash of the counters rather than e.g. `seed + step`, so neighbouring (step, layer) keys give unrelated
    streams (no overlap between layer 1 of step 0 and layer 0 of step 1).
    """
    if noise_reuse < 1:
        raise PopulationError(f"noise_reuse must be >= 1 (1 = fresh noise every step), got {noise_reuse}")
    counters = f"{int(seed)}/{int(step) // int(noise_reuse)}/{int(layer)}".encode()
    digest = hashlib.blake2b(counters, digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1  # 63 bits: torch.Generator.manual_seed takes a signed int64 range


def num_pairs(population_size: int, antithetic: bool) -> int:
    """Number of distinct (A, B) factor pairs: N/2 with antithetic sampling, N without."""
    if population_size < 1:
        raise PopulationError(f"population_size must be >= 1, got {population_size}")
    if antithetic and population_size % 2:
        raise PopulationError(f"antithetic sampling pairs members 2k and 2k+1, so population_size must be even, "
                              f"got {population_size}; use an even population_size or antithetic: false")
    return population_size // 2 if antithetic else population_size


def member_pairs(population_size: int, antithetic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(pair index [N] int64, sign [N] fp32) of every member.

    Antithetic (docs/design.md §1): members 2k and 2k+1 share pair k with signs +1 and -1, which cancels the
    even-order terms of the fitness in the ES estimate. Otherwise member i owns pair i with sign +1.
    """
    num_pairs(population_size, antithetic)  # validates
    members = torch.arange(population_size)
    if antithetic:
        return members // 2, 1.0 - 2.0 * (members % 2).to(torch.float32)
    return members, torch.ones(population_size)


def layer_noise(seed_int: int, num_pairs: int, m: int, n: int, rank: int,
                device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors of one layer for the whole population: (A [P, m, r], B [P, n, r]), fp32 standard normal.

    A single draw of [P, m+n, r] from a generator seeded with `seed_int`, so the same key gives bit-identical
    noise on the same device type (CPU and CUDA generators produce different streams).
    """
    generator = torch.Generator(device=device).manual_seed(seed_int)
    z = torch.randn(num_pairs, m + n, rank, generator=generator, device=device, dtype=torch.float32)
    return z[:, :m], z[:, m:]  # A: [P, m, r]  B: [P, n, r]
