"""Fitness shaping: checked against plain-Python loops over random score matrices, plus its invariances."""

import math
import statistics

import pytest
import torch

from eggroll_llm.fitness import (
    FITNESS_METHODS,
    FitnessError,
    antithetic_coefficients,
    centered_rank_fitness,
    check_scores,
    group_centered_fitness,
    shape_fitness,
)


def _random_grid(seed: int, members: int = 8, slots: int = 3, prompts: int = 4):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(members, slots, generator=g)
    prompt_ids = torch.randint(0, prompts, (members, slots), generator=g) * 7 + 3  # sparse ids: only equality counts
    return scores, prompt_ids


def _loop_group_centered(scores: torch.Tensor, prompt_ids: torch.Tensor, eps: float = 1e-8) -> list[float]:
    s, q = scores.tolist(), prompt_ids.tolist()
    by_prompt: dict[int, list[float]] = {}
    for row_s, row_q in zip(s, q):
        for value, pid in zip(row_s, row_q):
            by_prompt.setdefault(pid, []).append(value)
    mu = {pid: sum(v) / len(v) for pid, v in by_prompt.items()}
    sigma = statistics.pstdev([v for row in s for v in row])
    return [sum(v - mu[pid] for v, pid in zip(row_s, row_q)) / len(row_s) / (sigma + eps) for row_s, row_q in zip(s, q)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_group_centered_matches_loop(seed):
    scores, prompt_ids = _random_grid(seed)
    got = group_centered_fitness(scores, prompt_ids)
    assert got.dtype == torch.float32 and got.shape == (8,)
    torch.testing.assert_close(got, torch.tensor(_loop_group_centered(scores, prompt_ids)), atol=1e-5, rtol=1e-5)


def test_group_centering_removes_prompt_difficulty():
    scores, prompt_ids = _random_grid(3)
    easier = scores + 5.0 * (prompt_ids == prompt_ids[0, 0])  # one prompt made uniformly easier
    base, shifted = group_centered_fitness(scores, prompt_ids), group_centered_fitness(easier, prompt_ids)
    # The centred deviations are unchanged; only σ̄ (std of all raw scores, DESIGN §1) rescales them.
    torch.testing.assert_close(shifted * easier.std(correction=0), base * scores.std(correction=0),
                               atol=1e-5, rtol=1e-5)
    assert torch.equal(shifted.argsort(), base.argsort())


def test_zero_spread_gives_exact_zeros():
    scores = torch.full((6, 2), 0.7)  # 0.7 is not exact in binary: a sum/count mean would leave rounding residue
    fitness = group_centered_fitness(scores, torch.arange(12).view(6, 2) % 3)
    assert torch.equal(fitness, torch.zeros(6))
    # Constant within every prompt, different across prompts: no member did better than another on any prompt.
    per_prompt = torch.tensor([0.1, 0.3, 0.7]).repeat(4)[:, None]                  # [12, 1]
    fitness = group_centered_fitness(per_prompt, torch.arange(12)[:, None] % 3)
    assert torch.equal(fitness, torch.zeros(12))
    assert torch.isfinite(centered_rank_fitness(scores)).all()


def test_centered_rank_matches_loop_with_ties():
    g = torch.Generator().manual_seed(4)
    scores = torch.randint(0, 4, (10, 2), generator=g).float()  # few distinct means: ties guaranteed
    got = centered_rank_fitness(scores)
    means = scores.mean(1).tolist()
    expected = []
    for x in means:
        below = sum(1 for y in means if y < x)
        equal = sum(1 for y in means if y == x)
        expected.append((below + (equal - 1) / 2) / (len(means) - 1) - 0.5)
    torch.testing.assert_close(got, torch.tensor(expected))
    assert got.min() >= -0.5 and got.max() <= 0.5 and abs(float(got.sum())) < 1e-5
    for i in range(10):
        for j in range(10):
            if means[i] == means[j]:
                assert got[i] == got[j]
            elif means[i] < means[j]:
                assert got[i] < got[j]


def test_centered_rank_extremes_and_constant():
    got = centered_rank_fitness(torch.tensor([[3.0], [1.0], [2.0], [0.0]]))
    torch.testing.assert_close(got, torch.tensor([0.5, -1 / 6, 1 / 6, -0.5]))
    assert torch.equal(centered_rank_fitness(torch.full((5, 3), 2.5)), torch.zeros(5))
    assert torch.equal(centered_rank_fitness(torch.tensor([[1.0]])), torch.zeros(1))


def test_shape_fitness_dispatch():
    scores, prompt_ids = _random_grid(5)
    assert FITNESS_METHODS == ("group_centered", "centered_rank", "z_score", "none")
    torch.testing.assert_close(shape_fitness(scores, prompt_ids), group_centered_fitness(scores, prompt_ids))
    torch.testing.assert_close(shape_fitness(scores, prompt_ids, "centered_rank"), centered_rank_fitness(scores))
    torch.testing.assert_close(shape_fitness(scores, prompt_ids, "none"), scores.mean(dim=1))  # as given
    with pytest.raises(ValueError, match="group_centered, centered_rank, z_score, none"):
        shape_fitness(scores, prompt_ids, "rank")
    with pytest.raises(ValueError, match="prompt_ids has shape"):
        group_centered_fitness(scores, prompt_ids[:, :2])


def test_check_scores_converts_and_maps_none_to_zero():
    got = check_scores([1, None, 0.5, True], 4, "gsm8k")
    assert got.dtype == torch.float32
    assert got.tolist() == [1.0, 0.0, 0.5, 1.0]
    assert check_scores(torch.tensor([0.25, 1.0], dtype=torch.float64), 2).dtype == torch.float32


@pytest.mark.parametrize("bad, match", [
    ([1.0] * 7, "reward 'gsm8k' returned 7 scores for 8 completions"),
    ([0.0, 1.0, float("nan")] + [0.0] * 5, "nan at index 2"),
    ([0.0] * 5 + [float("-inf"), 0.0, 0.0], "-inf at index 5"),
    ([0.0, "1.0"] + [0.0] * 6, "non-numeric score '1.0' at index 1"),
    (torch.zeros(8, 1), r"shape \(8, 1\)"),
    (torch.tensor([0.0] * 7 + [float("inf")]), "inf at index 7"),
])
def test_check_scores_rejects(bad, match):
    with pytest.raises(FitnessError, match=match):
        check_scores(bad, 8, "gsm8k")
    assert issubclass(FitnessError, ValueError)


def test_antithetic_coefficients_match_loop():
    g = torch.Generator().manual_seed(6)
    n, p = 12, 6
    fitness = torch.randn(n, generator=g)
    pairs = torch.arange(n) // 2
    signs = torch.tensor([1.0, -1.0]).repeat(p)
    got = antithetic_coefficients(fitness, pairs, signs, p)
    expected = [0.0] * p
    for i in range(n):
        expected[int(pairs[i])] += float(fitness[i]) * float(signs[i])
    torch.testing.assert_close(got, torch.tensor(expected))
    assert math.isclose(float(got[0]), float(fitness[0] - fitness[1]), rel_tol=1e-6)
    with pytest.raises(ValueError, match="pair ids must lie in"):
        antithetic_coefficients(fitness, pairs, signs, p - 1)
