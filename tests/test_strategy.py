"""ES strategies (eggroll_llm/strategy.py, openai_es.py): which noise each parameter gets, the estimator, checks on a
strategy's output, and a user-written strategy that trains a toy through both scoring paths."""

import math

import pytest
import torch
from torch import nn

from eggroll_llm.es import EggrollES
from eggroll_llm.openai_es import OpenAIStrategy
from eggroll_llm.strategy import DenseNoise, EggrollStrategy, LowRankNoise, Strategy, Target, member_noise, weighted_sum


def toy() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A 4-16-1 tanh student and a fixed teacher of the same shape on 64 samples (regression)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        teacher, student = (nn.Sequential(nn.Linear(4, 16), nn.Tanh(), nn.Linear(16, 1)) for _ in range(2))
        X = torch.randn(64, 4)
    with torch.no_grad():
        return student, X, teacher(X)


class EliteRademacher(Strategy):
    """A user strategy: ±1 directions instead of Gaussian ones, and (μ, λ) selection instead of the ES gradient
    estimate: the centre moves to the mean perturbation of the best quarter of the population."""

    def noise(self, target, key, num_pairs):
        g = torch.Generator(target.param.device).manual_seed(key)
        E = torch.randint(0, 2, (num_pairs, *target.shape), generator=g, device=target.param.device)
        return DenseNoise(2.0 * E.to(torch.float32) - 1.0)

    def weights(self, fitness, pairs, signs, num_pairs):
        elite = (fitness >= fitness.quantile(0.75)).to(torch.float32)
        return torch.zeros(num_pairs).index_add_(0, pairs, elite * signs / elite.sum())


@pytest.mark.parametrize("path", ["step", "batched"])
def test_a_user_strategy_trains_a_toy(path):
    student, X, Y = toy()
    es = EggrollES(student, population_size=32, sigma=0.05, lr=0.05, strategy=EliteRademacher(), seed=0)

    def mse() -> float:
        with torch.no_grad():
            return float(((student(X) - Y) ** 2).mean())

    def score(model, population):
        population.set_rows(torch.arange(32))
        return -((model(X.expand(32, -1, -1)) - Y) ** 2).mean(dim=(1, 2))

    start = mse()
    for _ in range(40):
        if path == "step":
            es.step(lambda model: -float(((model(X) - Y) ** 2).mean()))
        else:
            es.tell(es.evaluate(score))
    assert mse() < 0.3 * start, (start, mse())
    noise = es.population.noise(es.targets["0.weight"])
    assert isinstance(noise, DenseNoise) and set(noise.E.unique().tolist()) == {-1.0, 1.0}


def test_eggroll_noise_is_low_rank_on_matrices_and_conv_kernels_and_dense_elsewhere():
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.Flatten(), nn.Linear(3, 4), nn.LayerNorm(4), nn.Embedding(5, 4))
    es = EggrollES(model, population_size=4, sigma=0.1, lr=0.1, rank=2)
    kinds = {name: type(es.population.noise(t)).__name__ for name, t in es.targets.items()}
    assert kinds == {"0.weight": "LowRankNoise", "0.bias": "DenseNoise", "2.weight": "LowRankNoise",
                     "2.bias": "DenseNoise", "3.weight": "DenseNoise", "3.bias": "DenseNoise",
                     "4.weight": "LowRankNoise"}
    A, B = es.population.noise(es.targets["0.weight"])
    assert A.shape == (2, 3, 2) and B.shape == (2, 2 * 3 * 3, 2)           # P=2 pairs, [out, in·k·k], rank 2
    openai = EggrollES(model, population_size=4, sigma=0.1, lr=0.1, strategy=OpenAIStrategy())
    assert all(isinstance(openai.population.noise(t), DenseNoise) for t in openai.targets.values())


def test_member_noise_and_weighted_sum_agree_with_their_definitions():
    target = Target("w", 0, nn.Parameter(torch.zeros(5, 2, 3)), (5, 6))
    A, B = torch.randn(3, 5, 2), torch.randn(3, 6, 2)
    w = torch.tensor([0.5, -1.0, 2.0])
    eps = [(A[k] @ B[k].T / math.sqrt(2)).view(5, 2, 3) for k in range(3)]             # ε_k = A_k B_kᵀ / √r
    for k in range(3):
        torch.testing.assert_close(member_noise(target, LowRankNoise(A, B), k), eps[k])
    torch.testing.assert_close(weighted_sum(target, LowRankNoise(A, B), w), sum(w[k] * eps[k] for k in range(3)))
    E = torch.randn(3, 5, 2, 3)
    torch.testing.assert_close(weighted_sum(target, DenseNoise(E), w), sum(w[k] * E[k] for k in range(3)))


class WrongShape(Strategy):
    def noise(self, target, key, num_pairs):
        return DenseNoise(torch.zeros(num_pairs, 3))


class LowRankOnABias(EggrollStrategy):
    def noise(self, target, key, num_pairs):
        return LowRankNoise(torch.zeros(num_pairs, 4, 1), torch.zeros(num_pairs, 1, 1))


@pytest.mark.parametrize("strategy, match", [(WrongShape(), r"expected \(2, 4, 3\)"),
                                             (LowRankOnABias(), "low-rank factors"),
                                             (Strategy(), "must define noise")])
def test_a_strategy_giving_unusable_noise_is_refused_by_name(strategy, match):
    es = EggrollES(nn.Linear(3, 4), population_size=4, sigma=0.1, lr=0.1, strategy=strategy)
    with pytest.raises((ValueError, NotImplementedError), match=match):
        es.step(lambda model: 0.0)


def test_rank_belongs_to_the_strategy_when_one_is_given():
    with pytest.raises(ValueError, match="EggrollStrategy\\(rank=4\\)"):
        EggrollES(nn.Linear(3, 4), population_size=4, sigma=0.1, lr=0.1, rank=4, strategy=OpenAIStrategy())
    with pytest.raises(ValueError, match="in-place mode"):
        EggrollES(nn.Linear(3, 4), population_size=4, sigma=0.1, lr=0.1, adapter_rank=2, param_filter=lambda *a: True)
