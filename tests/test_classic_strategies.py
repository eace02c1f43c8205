"""The classic strategies (classic.py, cma_es.py) on the one ES engine: each halves a shifted sphere's loss in a
fixed budget, their state round-trips through the ES object's state dict and resumes exactly, cma_es is the
cmaes library's own ask/tell loop on the engine's normals, and a user strategy with state of its own is saved and
restored by the engine."""

import numpy as np
import pytest
import torch
from torch import nn

from eggroll_llm.classic import SNES, SimpleES, ranks
from eggroll_llm.es import EggrollES
from eggroll_llm.noise import noise_seed
from eggroll_llm.strategy import STRATEGIES, DenseNoise, Strategy, gaussian

cmaes = pytest.importorskip("cmaes")
SHIFT = torch.linspace(-1.0, 1.0, 10) + 0.5


class Point(nn.Module):
    def __init__(self, d=10):
        super().__init__()
        self.x = nn.Parameter(torch.zeros(d))


def sphere_loss(model) -> float:
    return float(((model.x.detach() - SHIFT) ** 2).sum())


def run(strategy, steps, state=None, seed=0, **kw):
    model = Point()
    es = EggrollES(model, population_size=10, sigma=0.3, lr=1.0, strategy=strategy, seed=seed, **kw)
    if state is not None:
        es.load_state_dict(state)
    for _ in range(steps):
        es.step(lambda m: -sphere_loss(m))
    return model, es


def test_the_classic_names_resolve_to_their_classes():
    assert set(STRATEGIES) >= {"eggroll", "openai_es", "simple_es", "snes", "cma_es"}
    assert STRATEGIES["snes"] is SNES and STRATEGIES["simple_es"] is SimpleES
    assert STRATEGIES["cma_es"].__name__ == "CMAStrategy"


@pytest.mark.parametrize("strategy", ["simple_es", "snes", "cma_es"])
def test_each_classic_strategy_halves_a_shifted_sphere_in_40_steps(strategy):
    start = sphere_loss(Point())
    model, es = run(strategy, 40)
    assert sphere_loss(model) < 0.5 * start, (strategy, start, sphere_loss(model))
    assert not es.population.antithetic                 # independent samples by default


def test_snes_adapts_sigma_down_near_the_optimum_and_works_in_an_adapter():
    _, es = run("snes", 60)
    assert float(es.strategy.ratio["x"].max()) < 0.5    # σ shrinks as the centre closes in on the shift
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3, bias=False))
    X, target = torch.randn(32, 4), torch.randn(32, 3)

    def loss(m) -> float:
        return float(((m(X) - target) ** 2).mean())

    es = EggrollES(model, population_size=12, sigma=0.2, lr=1.0, strategy="snes", adapter_rank="full")
    start = loss(model)
    for _ in range(40):
        es.step(lambda m: -loss(m))
    assert loss(model) < 0.8 * start


@pytest.mark.parametrize("strategy", ["simple_es", "snes", "cma_es"])
def test_state_round_trips_through_the_state_dict_and_resume_is_exact(strategy):
    whole, _ = run(strategy, 6)
    _, half = run(strategy, 3)
    state = {k: v.clone() for k, v in half.state_dict().items()}
    assert any(k.startswith("strategy.") for k in state)
    resumed, _ = run(strategy, 3, state=state)
    assert torch.equal(whole.x, resumed.x)


class Normals:
    """Stands in for the library's NumPy generator: hands out given rows of standard normals, one per ask()."""

    def __init__(self, rows):
        self.rows = iter(rows)

    def randn(self, n):
        row = next(self.rows)
        assert row.shape == (n,)
        return row


@pytest.mark.parametrize("separable", [False, True])
def test_cma_es_is_the_cmaes_librarys_own_ask_tell_loop_on_the_engines_normals(separable):
    """The library's own ask() (its generator fed the engine's keyed normals z) gives this step's members, and its
    own tell() the next centre: the library's trajectory, with the engine's noise."""
    model, es = run(STRATEGIES["cma_es"](separable=separable), 0, seed=7)
    ref = (cmaes.SepCMA if separable else cmaes.CMA)(mean=np.zeros(10), sigma=0.3, population_size=10)
    target, shift = es.targets["x"], SHIFT.double().numpy()
    for step in range(25):
        z = torch.randn(10, 10, generator=torch.Generator().manual_seed(noise_seed(7, step, 1, target.index)))
        z = z.double().numpy()
        ref._rng = Normals(z)
        xs = [ref.ask() for _ in range(10)]
        members = []

        def fitness(m):
            members.append(m.x.detach().double().numpy().copy())
            return -sphere_loss(m)

        es.step(fitness)
        np.testing.assert_allclose(np.stack(members), np.stack(xs), rtol=1e-6, atol=1e-6)
        ref.tell([(x, float(((x - shift) ** 2).sum())) for x in xs])
        np.testing.assert_allclose(model.x.detach().double().numpy(), ref.mean, rtol=1e-6, atol=1e-6)
    assert es.strategy.sigma == pytest.approx(ref._sigma, rel=1e-6)
    assert type(es.strategy.lib) is (cmaes.SepCMA if separable else cmaes.CMA)


@pytest.mark.parametrize("kw, match", [({"antithetic": True}, "antithetic=False"), ({"lr": 0.5}, "lr=1.0"),
                                       ({"adapter_rank": "full"}, "in place")])
def test_cma_es_refuses_settings_that_would_leave_the_librarys_mean(kw, match):
    args = {"population_size": 10, "sigma": 0.3, "lr": 1.0, **kw}
    model = nn.Sequential(nn.Linear(2, 2)) if "adapter_rank" in kw else Point()
    with pytest.raises(ValueError, match=match):
        EggrollES(model, strategy="cma_es", **args)


def test_ranks_put_the_best_first():
    assert ranks(torch.tensor([0.1, 3.0, -2.0, 1.0])).tolist() == [2, 0, 3, 1]
    u = SNES().utilities(torch.tensor([0.1, 3.0, -2.0, 1.0, 0.0, 0.5]))
    assert abs(float(u.sum())) < 1e-6 and int(u.argmax()) == 1 and float(u[2]) == float(u.min())


class DecayingGaussian(Strategy):
    """A user strategy with state: dense Gaussian noise whose scale halves after every step."""

    def setup(self, es):
        self.scale = torch.tensor(1.0)

    def noise(self, target, key, num_pairs):
        return DenseNoise(gaussian(target, key, num_pairs).E * self.scale)

    def update(self, fitness):
        self.scale = self.scale * 0.5

    def state_dict(self):
        return {"scale": self.scale.clone()}

    def load_state_dict(self, state):
        self.scale = state["scale"].clone()


def test_a_user_strategy_with_state_is_checkpointed_by_the_engine():
    model = Point()
    es = EggrollES(model, population_size=8, sigma=0.1, lr=0.05, strategy=DecayingGaussian())
    for _ in range(3):
        es.step(lambda m: -sphere_loss(m))
    state = es.state_dict()
    assert float(state["strategy.scale"]) == 0.125
    other = EggrollES(Point(), population_size=8, sigma=0.1, lr=0.05, strategy=DecayingGaussian())
    other.load_state_dict(state)
    assert float(other.strategy.scale) == 0.125 and torch.equal(other.model.x, model.x)
