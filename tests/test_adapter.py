"""The fold of docs/design.md §3: low-rank fold == truncated SVD of the dense sum; dense fold; export; ES step."""

import math

import pytest
import torch

from eggroll_llm.adapter import decay, es_step_coefficients, fold_dense, fold_lowrank, truncate
from eggroll_llm.fitness import group_centered_fitness


def _case(seed: int, m: int, n: int, R: int, P: int, r: int, adapter_scale: float = 1.0, step_scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    U, V = torch.randn(m, R, generator=g) * adapter_scale, torch.randn(n, R, generator=g)
    A, B = torch.randn(P, m, r, generator=g), torch.randn(P, n, r, generator=g)
    coeffs = torch.randn(P, generator=g) * step_scale
    return U, V, A, B, coeffs


def _dense_sum(U, V, A, B, coeffs):
    total = U @ V.T
    for k in range(A.shape[0]):  # the definition, term by term
        total = total + coeffs[k] * A[k] @ B[k].T
    return total


def _best_rank(D, rank):
    Ud, S, Vh = torch.linalg.svd(D, full_matrices=False)
    return Ud[:, :rank] * S[:rank] @ Vh[:rank], S[:rank]


def test_fold_is_exact_when_rank_suffices():
    U, V, A, B, coeffs = _case(0, m=20, n=12, R=2, P=3, r=1)   # R + P r = 5 <= rank: nothing to drop
    U2, V2 = fold_lowrank(U, V, A, B, coeffs, rank=6)
    assert U2.shape == (20, 6) and V2.shape == (12, 6) and U2.dtype == torch.float32
    torch.testing.assert_close(U2 @ V2.T, _dense_sum(U, V, A, B, coeffs), atol=1e-5, rtol=0)


@pytest.mark.parametrize("m, n, R, P, r, rank", [
    (40, 40, 3, 4, 2, 3),    # QR path: R + P r = 11 <= min(m, n) / 2
    (16, 12, 2, 20, 1, 4),   # dense path forced by many pairs on a small matrix (22 > 6), exact SVD
])
def test_fold_keeps_top_svd_part(m, n, R, P, r, rank):
    U, V, A, B, coeffs = _case(1, m, n, R, P, r)
    U2, V2 = fold_lowrank(U, V, A, B, coeffs, rank)
    best, top = _best_rank(_dense_sum(U, V, A, B, coeffs), rank)
    torch.testing.assert_close(torch.linalg.svdvals(U2 @ V2.T)[:rank], top, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(U2 @ V2.T, best, atol=1e-4, rtol=1e-4)


def test_randomized_path_matches_exact_truncation():
    # 96x96 with rank 2: the 12-column sketch is narrow enough for the randomized SVD; 2 + 60 > 48 forces the dense path
    U, V, A, B, coeffs = _case(2, m=96, n=96, R=2, P=60, r=1, adapter_scale=10.0, step_scale=0.01)
    rng_before = torch.get_rng_state()
    U2, V2 = fold_lowrank(U, V, A, B, coeffs, rank=2)
    assert torch.equal(torch.get_rng_state(), rng_before), "the fold must not draw from the global RNG"
    best, _ = _best_rank(_dense_sum(U, V, A, B, coeffs), 2)
    assert float((U2 @ V2.T - best).norm() / best.norm()) < 1e-4
    U3, V3 = fold_lowrank(U, V, A, B, coeffs, rank=2)
    assert torch.equal(U2, U3) and torch.equal(V2, V3)  # identical on every process (docs/design.md §8)


def test_randomized_path_is_near_optimal_on_a_flat_spectrum():
    # A pure ES step: sum of many random rank-1 terms, no spectral gap — the hard case for a sketch.
    U, V, A, B, coeffs = _case(3, m=128, n=96, R=1, P=80, r=1)
    U, V = torch.zeros_like(U), torch.zeros_like(V)
    D = _dense_sum(U, V, A, B, coeffs)
    U2, V2 = fold_lowrank(U, V, A, B, coeffs, rank=4)
    best, _ = _best_rank(D, 4)
    assert float((D - U2 @ V2.T).norm()) <= 1.001 * float((D - best).norm())


@pytest.mark.parametrize("P", [3, 30])  # QR path and dense path
def test_fold_from_zero_adapter_and_zero_everything(P):
    U, V, A, B, coeffs = _case(4, m=24, n=16, R=4, P=P, r=1)
    zU, zV = torch.zeros_like(U), torch.zeros_like(V)
    U2, V2 = fold_lowrank(zU, zV, A, B, coeffs, rank=4)
    best, _ = _best_rank(_dense_sum(zU, zV, A, B, coeffs), 4)
    torch.testing.assert_close(U2 @ V2.T, best, atol=1e-4, rtol=1e-4)
    U3, V3 = fold_lowrank(zU, zV, A, B, torch.zeros(P), rank=4)
    assert torch.equal(U3, torch.zeros(24, 4)) and torch.equal(V3, torch.zeros(16, 4))


@pytest.mark.parametrize("P", [3, 30])
def test_fold_balances_factors(P):
    U, V, A, B, coeffs = _case(5, m=32, n=20, R=3, P=P, r=1, adapter_scale=50.0)  # badly unbalanced input
    U2, V2 = fold_lowrank(U, V, A, B, coeffs, rank=3)
    torch.testing.assert_close(U2.norm(dim=0), V2.norm(dim=0), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(U2.norm(dim=0) ** 2, torch.linalg.svdvals(U2 @ V2.T)[:3], rtol=1e-4, atol=1e-5)


def test_fold_rejects_mismatched_noise():
    U, V, A, B, coeffs = _case(6, m=8, n=6, R=1, P=2, r=1)
    with pytest.raises(ValueError, match="noise factors must be"):
        fold_lowrank(U, V, B, A, coeffs, rank=1)
    with pytest.raises(ValueError, match="noise factors must be"):
        fold_lowrank(U, V, A, B, coeffs[:1], rank=1)


def test_fold_dense_is_exact():
    U, V, A, B, coeffs = _case(7, m=10, n=14, R=2, P=5, r=3)
    delta = U @ V.T
    torch.testing.assert_close(fold_dense(delta, A, B, coeffs), _dense_sum(U, V, A, B, coeffs), atol=1e-5, rtol=0)


def test_truncate_energy():
    U, V, *_ = _case(8, m=18, n=12, R=3, P=1, r=1)
    low_rank = U @ V.T
    for rank in (3, 5):
        U2, V2, energy = truncate(low_rank, rank)
        assert U2.shape == (18, rank) and V2.shape == (12, rank)
        assert energy == pytest.approx(1.0, abs=1e-6)
        torch.testing.assert_close(U2 @ V2.T, low_rank, atol=1e-5, rtol=0)
    full = torch.randn(18, 12, generator=torch.Generator().manual_seed(9))
    S = torch.linalg.svdvals(full)
    U2, V2, energy = truncate(full, 4)
    assert energy == pytest.approx(float(S[:4].pow(2).sum() / S.pow(2).sum()), rel=1e-5)
    torch.testing.assert_close(U2 @ V2.T, _best_rank(full, 4)[0], atol=1e-5, rtol=1e-5)
    U2, V2, energy = truncate(torch.zeros(5, 4), 8)  # wider than the matrix: zero-padded to the export rank
    assert energy == 1.0 and U2.shape == (5, 8) and not U2.any() and not V2.any()


def test_decay_scales_delta():
    U, V, *_ = _case(10, m=6, n=5, R=2, P=1, r=1)
    U2, V2 = decay(U, V, 0.9)
    torch.testing.assert_close(U2 @ V2.T, 0.9 * U @ V.T)
    torch.testing.assert_close(U2.norm() / U.norm(), torch.tensor(math.sqrt(0.9)))
    with pytest.raises(ValueError, match="lr \\* weight_decay"):
        decay(U, V, -0.1)


def test_es_step_coefficients_match_the_gradient_formula():
    g = torch.Generator().manual_seed(11)
    N, P, r, m, n, sigma, lr = 8, 4, 2, 5, 7, 0.3, 0.05
    fitness = torch.randn(N, generator=g)
    pairs, signs = torch.arange(N) // 2, torch.tensor([1.0, -1.0]).repeat(P)
    A, B = torch.randn(P, m, r, generator=g), torch.randn(P, n, r, generator=g)
    grad = torch.zeros(m, n)
    for i in range(N):  # g = 1/(N σ) Σ_i f_i s_i (σ/√r) A_i B_iᵀ, member by member
        grad += fitness[i] * signs[i] * (sigma / math.sqrt(r)) * A[pairs[i]] @ B[pairs[i]].T / (N * sigma)
    coeffs = es_step_coefficients(fitness, pairs, signs, P, N, r, lr)
    torch.testing.assert_close(fold_dense(torch.zeros(m, n), A, B, coeffs), lr * grad, atol=1e-6, rtol=1e-5)


def test_es_step_ascends_a_quadratic():
    g = torch.Generator().manual_seed(12)
    m = n = 16
    P, r, sigma = 4096, 1, 0.05
    W, target = torch.randn(m, n, generator=g), torch.randn(m, n, generator=g)
    A, B = torch.randn(P, m, r, generator=g), torch.randn(P, n, r, generator=g)
    pairs, signs = torch.arange(2 * P) // 2, torch.tensor([1.0, -1.0]).repeat(P)
    noise = (A @ B.mT / math.sqrt(r))[pairs]                                      # [N, m, n]
    perturbed = W + sigma * signs[:, None, None] * noise

    def objective(w):
        return -(w - target).pow(2).sum(dim=(-2, -1))

    scores = objective(perturbed)[:, None]                                        # one shared "prompt"
    fitness = group_centered_fitness(scores, torch.zeros_like(scores, dtype=torch.long))
    coeffs = es_step_coefficients(fitness, pairs, signs, P, 2 * P, r, lr=1.0)
    step = fold_dense(torch.zeros(m, n), A, B, coeffs)
    true_grad = 2 * (target - W)
    assert float(torch.nn.functional.cosine_similarity(step.flatten(), true_grad.flatten(), dim=0)) > 0.9
    assert objective(W + 1e-2 * step / step.norm()) > objective(W)
