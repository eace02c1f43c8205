"""The fp32 adapter an ES step folds into: ΔW = U Vᵀ (U: [m, R], V: [n, R]), or a dense delta for `full` rank.

docs/design.md §1/§3. With the antithetic coefficients c_k = Σ_{i in pair k} f_i s_i (fitness.py) the ES gradient, 1/σ
divided out, is

    g = 1/(N σ) Σ_i f_i s_i (σ/√r) A_i B_iᵀ = 1/(N √r) Σ_k c_k A_k B_kᵀ,

and the step ΔW += lr·g is a sum of P rank-r terms. `fold_lowrank` keeps the best rank-R approximation of
U Vᵀ + Σ_k w_k A_k B_kᵀ (Eckart–Young) by QR of the stacked factors and an SVD of the small core; once the stack is
wider than about min(m, n)/2 that is no cheaper than the dense matrix, so it builds D with one matmul and takes a
randomized SVD (Halko, Martinsson & Tropp 2009) instead. Singular values are split evenly between U and V so
neither factor drifts in scale over thousands of folds. Everything is pure and computed in fp32.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .fitness import antithetic_coefficients

OVERSAMPLING = 10      # extra sketch columns of the randomized SVD; Halko et al. §4.2 suggest 5–10
POWER_ITERATIONS = 4   # subspace iterations; ES steps have a flat noise spectrum, so more than the usual 2
# The sketch is drawn from a fixed-seed CPU generator, not the global RNG (torch.svd_lowrank has no generator
# argument): every process of a distributed run must fold to the bit-identical adapter (docs/design.md §8).
_SKETCH_SEED = 0


def es_step_coefficients(fitness: Tensor, pairs: Tensor, signs: Tensor, num_pairs: int, population_size: int,
                         rank: int, lr: float) -> Tensor:
    """w_k = lr · c_k / (N √r) → [P], the weights of A_k B_kᵀ in the step ΔW += lr·g (gradient ascent on fitness)."""
    if population_size < 1 or rank < 1:
        raise ValueError(f"population_size and rank must be >= 1, got {population_size} and {rank}")
    c = antithetic_coefficients(fitness, pairs, signs, num_pairs)
    return c * (lr / (population_size * math.sqrt(rank)))


def _stacked_noise(A: Tensor, B: Tensor, coeffs: Tensor, m: int, n: int) -> tuple[Tensor, Tensor]:
    """A·diag(c) and B with the pair axis folded into columns: [m, P r], [n, P r]."""
    if A.dim() != 3 or B.dim() != 3 or A.shape[0] != B.shape[0] or A.shape[2] != B.shape[2] \
            or A.shape[1] != m or B.shape[1] != n or coeffs.shape != (A.shape[0],):
        raise ValueError(f"noise factors must be A [P, {m}, r], B [P, {n}, r], coeffs [P]; got A {tuple(A.shape)}, "
                         f"B {tuple(B.shape)}, coeffs {tuple(coeffs.shape)}")
    P, _, r = A.shape
    weighted = A.to(torch.float32) * coeffs.to(device=A.device, dtype=torch.float32)[:, None, None]
    return weighted.permute(1, 0, 2).reshape(m, P * r), B.to(torch.float32).permute(1, 0, 2).reshape(n, P * r)


def _balanced(left: Tensor, s: Tensor, right: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """U' = L √S, V' = R √S from the top singular triplets, zero-padded to exactly `rank` columns."""
    k = min(rank, s.numel())
    root = s[:k].clamp_min(0).sqrt()
    U, V = left[:, :k] * root, right[:, :k] * root
    if k < rank:  # fewer singular values than the adapter rank (tiny layer): the extra directions are zero
        U = torch.cat([U, U.new_zeros(U.shape[0], rank - k)], dim=1)
        V = torch.cat([V, V.new_zeros(V.shape[0], rank - k)], dim=1)
    return U, V


def _top_svd(D: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """Leading singular triplets (U [m, q], S [q], V [n, q], q ≥ rank where possible) of a dense D [m, n]."""
    q = rank + OVERSAMPLING
    if 4 * q >= min(D.shape):  # a sketch this wide saves nothing over the exact SVD
        U, S, Vh = torch.linalg.svd(D, full_matrices=False)
        return U, S, Vh.mT
    # Randomized range finder with power iterations (Halko et al. 2009, Alg. 4.4), then an exact SVD of QᵀD [q, n].
    generator = torch.Generator().manual_seed(_SKETCH_SEED)
    sketch = torch.randn(D.shape[1], q, generator=generator).to(D.device)           # [n, q]
    Q = torch.linalg.qr(D @ sketch).Q                                                # [m, q]
    for _ in range(POWER_ITERATIONS):
        Q = torch.linalg.qr(D @ torch.linalg.qr(D.mT @ Q).Q).Q
    Ub, S, Vh = torch.linalg.svd(Q.mT @ D, full_matrices=False)
    return Q @ Ub, S, Vh.mT


def fold_lowrank(U: Tensor, V: Tensor, A: Tensor, B: Tensor, coeffs: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-`rank` factors (U' [m, rank], V' [n, rank]) of U Vᵀ + Σ_k coeffs_k A_k B_kᵀ.

    U: [m, R], V: [n, R], A: [P, m, r], B: [P, n, r], coeffs: [P]. Exact (up to fp32 rounding) whenever the sum has
    rank ≤ `rank`; otherwise its top-`rank` SVD part, exactly on the QR path and to randomized-SVD accuracy on the
    dense path taken for wide stacks on large layers.
    """
    if rank < 1:
        raise ValueError(f"adapter rank must be >= 1, got {rank}")
    if U.dim() != 2 or V.dim() != 2 or U.shape[1] != V.shape[1]:
        raise ValueError(f"adapter factors must be U [m, R], V [n, R]; got {tuple(U.shape)} and {tuple(V.shape)}")
    (m, _), n = U.shape, V.shape[0]
    noise_left, noise_right = _stacked_noise(A, B, coeffs, m, n)
    left = torch.cat([U.to(torch.float32), noise_left.to(U.device)], dim=1)         # [m, K], K = R + P r
    right = torch.cat([V.to(torch.float32), noise_right.to(V.device)], dim=1)       # [n, K]
    if left.shape[1] > min(m, n) / 2:  # docs/design.md §3: QR on a stack this wide costs more than the dense matrix
        Ud, S, Vd = _top_svd(left @ right.mT, rank)                                  # D: [m, n], one matmul
        return _balanced(Ud, S, Vd, rank)
    Q1, R1 = torch.linalg.qr(left)                                                   # Q1: [m, K]  R1: [K, K]
    Q2, R2 = torch.linalg.qr(right)                                                  # Q2: [n, K]  R2: [K, K]
    Uc, S, Vch = torch.linalg.svd(R1 @ R2.mT)                                        # U Vᵀ + ... = Q1 (R1 R2ᵀ) Q2ᵀ
    k = min(rank, S.numel())
    return _balanced(Q1 @ Uc[:, :k], S, Q2 @ Vch[:k].mT, rank)


def fold_step_lowrank(U: Tensor, V: Tensor, step: Tensor, rank: int) -> tuple[Tensor, Tensor]:
    """Best rank-`rank` factors of U Vᵀ + step, for a dense step [m, n] (a full-rank strategy's, or an optimizer's
    direction that is not a sum of the noise factors)."""
    Ud, S, Vd = _top_svd(torch.addmm(step.to(torch.float32), U.to(torch.float32), V.to(torch.float32).mT), rank)
    return _balanced(Ud, S, Vd, rank)


def fold_dense(delta: Tensor, A: Tensor, B: Tensor, coeffs: Tensor) -> Tensor:
    """delta + Σ_k coeffs_k A_k B_kᵀ → [m, n], exactly (adapter_rank: full, the paper's full-parameter mode)."""
    m, n = delta.shape
    noise_left, noise_right = _stacked_noise(A, B, coeffs, m, n)
    return torch.addmm(delta.to(torch.float32), noise_left.to(delta.device), noise_right.to(delta.device).mT)


def truncate(delta: Tensor, rank: int) -> tuple[Tensor, Tensor, float]:
    """Balanced rank-`rank` factors of a dense delta [m, n] for export, and the energy kept Σ_top S² / Σ S².

    Exact SVD: exporting happens once, and the reported energy must describe the best possible truncation.
    A zero delta keeps all of its (zero) energy: 1.0.
    """
    if rank < 1:
        raise ValueError(f"export rank must be >= 1, got {rank}")
    Ud, S, Vh = torch.linalg.svd(delta.to(torch.float32), full_matrices=False)
    total = float(S.pow(2).sum())
    kept = float(S[:rank].pow(2).sum())
    U, V = _balanced(Ud, S, Vh.mT, rank)
    return U, V, kept / total if total > 0 else 1.0


def decay(U: Tensor, V: Tensor, factor: float) -> tuple[Tensor, Tensor]:
    """(√factor U, √factor V): scales ΔW = U Vᵀ by `factor`, e.g. 1 − lr·wd for decoupled weight decay."""
    if factor < 0:
        raise ValueError(f"decay factor must be >= 0, got {factor} (is lr * weight_decay > 1?)")
    root = math.sqrt(factor)
    return U * root, V * root


def lowrank_change_norm(U0: Tensor, V0: Tensor, U1: Tensor, V1: Tensor) -> float:
    """‖U1 V1ᵀ − U0 V0ᵀ‖_F from the factors alone: the step's size without building either [m, n] matrix.

    With L = [U1, U0] and R = [V1, −V0] the difference is L Rᵀ, and ‖L Rᵀ‖² = Σ (LᵀL) ∘ (RᵀR), two [2R, 2R] Gram
    matrices. They are summed in float64: a small step is the difference of two large adapters, and fp32 Gram
    entries would cancel to rounding noise.
    """
    L = torch.cat([U1, U0], dim=1).to(torch.float64)                                  # [m, 2R]
    R = torch.cat([V1, -V0], dim=1).to(torch.float64)                                 # [n, 2R]
    return float(((L.T @ L) * (R.T @ R)).sum().clamp_min(0).sqrt())
