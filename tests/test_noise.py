"""Noise keys, member pairs and layer draws (eggroll_llm/noise.py)."""

import pytest
import torch

from eggroll_llm.noise import PopulationError, layer_noise, member_pairs, noise_seed, num_pairs


def test_same_key_regenerates_identical_noise():
    key = noise_seed(7, 3, 1, 2)
    A1, B1 = layer_noise(key, 4, 6, 5, 2, "cpu")
    A2, B2 = layer_noise(noise_seed(7, 3, 1, 2), 4, 6, 5, 2, "cpu")
    assert A1.shape == (4, 6, 2) and B1.shape == (4, 5, 2)
    assert A1.dtype == B1.dtype == torch.float32
    assert torch.equal(A1, A2) and torch.equal(B1, B2)


def test_noise_is_one_draw_split_into_a_and_b():
    key = noise_seed(0, 0, 1, 0)
    A, B = layer_noise(key, 3, 4, 5, 2, "cpu")
    z = torch.randn(3, 9, 2, generator=torch.Generator().manual_seed(key))
    assert torch.equal(torch.cat([A, B], dim=1), z)


def test_noise_looks_standard_normal():
    A, B = layer_noise(noise_seed(1, 0, 1, 0), 64, 128, 96, 4, "cpu")
    z = torch.cat([A.flatten(), B.flatten()])
    assert abs(float(z.mean())) < 0.02 and abs(float(z.std()) - 1.0) < 0.02


@pytest.mark.parametrize("other", [(8, 3, 1, 2), (7, 4, 1, 2), (7, 3, 1, 3)])
def test_different_seed_step_or_layer_gives_different_noise(other):
    A, _ = layer_noise(noise_seed(7, 3, 1, 2), 2, 4, 4, 1, "cpu")
    A_other, _ = layer_noise(noise_seed(*other), 2, 4, 4, 1, "cpu")
    assert not torch.allclose(A, A_other)


def test_keys_of_neighbouring_counters_are_distinct():
    keys = {noise_seed(0, step, 1, layer) for step in range(50) for layer in range(50)}
    assert len(keys) == 2500
    assert all(0 <= k < 2 ** 63 for k in keys)


def test_noise_reuse_groups_steps():
    # noise_reuse=3: steps 0,1,2 share one key, step 3 starts the next window
    keys = [noise_seed(5, step, 3, 0) for step in range(7)]
    assert keys[0] == keys[1] == keys[2]
    assert keys[3] == keys[4] == keys[5]
    assert keys[2] != keys[3] and keys[5] != keys[6]
    assert noise_seed(5, 4, 1, 0) != noise_seed(5, 5, 1, 0)


def test_noise_reuse_below_one_raises():
    with pytest.raises(PopulationError, match="noise_reuse"):
        noise_seed(0, 0, 0, 0)


def test_antithetic_pairs_share_factors_with_opposite_signs():
    pairs, signs = member_pairs(6, antithetic=True)
    assert pairs.tolist() == [0, 0, 1, 1, 2, 2]
    assert signs.tolist() == [1.0, -1.0, 1.0, -1.0, 1.0, -1.0]
    assert num_pairs(6, True) == 3
    A, B = layer_noise(noise_seed(0, 0, 1, 0), num_pairs(6, True), 4, 3, 1, "cpu")
    # members 2k and 2k+1 perturb by exactly opposite matrices
    perturbation = signs[:, None, None] * (A[pairs] @ B[pairs].transpose(1, 2))   # [N, m, n]
    for k in range(3):
        assert torch.equal(perturbation[2 * k], -perturbation[2 * k + 1])
        assert not torch.allclose(perturbation[2 * k], perturbation[2 * k + 2 if k < 2 else 0])


def test_without_antithetic_every_member_owns_a_pair():
    pairs, signs = member_pairs(5, antithetic=False)
    assert pairs.tolist() == [0, 1, 2, 3, 4]
    assert signs.tolist() == [1.0] * 5
    assert num_pairs(5, False) == 5


def test_odd_population_with_antithetic_raises():
    with pytest.raises(PopulationError, match="even population_size or antithetic: false"):
        member_pairs(5, antithetic=True)
    with pytest.raises(PopulationError, match="population_size"):
        num_pairs(0, antithetic=False)
