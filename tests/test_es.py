"""The generic ES layer (eggroll_llm/es.py) and its full-rank OpenAI-ES baseline (eggroll_llm/openai_es.py).

Every check runs on a small MLP classifier scored in ONE batched forward over the population, with each of three
set-ups that share the ask/tell interface: EGGROLL with a low-rank adapter, EGGROLL with a dense adapter, OpenAI-ES.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eggroll_llm.es import EggrollES, population_rows
from eggroll_llm.fitness import centered_rank_fitness
from eggroll_llm.noise import layer_noise, member_pairs, noise_seed
from eggroll_llm.openai_es import OpenAIES, dense_noise

# fitness "none": the scorers below hand tell() fitness they shaped themselves (centred ranks, or fixed values)
SETUPS = {
    "eggroll-r8": lambda model, **kw: EggrollES(model, rank=1, adapter_rank=8, fitness="none", **kw),
    "eggroll-full": lambda model, **kw: EggrollES(model, rank=1, adapter_rank="full", fitness="none", **kw),
    "openai-es": lambda model, **kw: OpenAIES(model, fitness="none", **kw),
}
setups = pytest.mark.parametrize("setup", list(SETUPS))


def mlp(hidden: int = 32, seed: int = 0) -> nn.Sequential:
    with torch.random.fork_rng():  # the test's init, without touching the caller's global RNG
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                             nn.Linear(hidden, 2))


def circles(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two concentric noisy rings (radius 1: class 0, radius 2: class 1): not linearly separable."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    radius = 1.0 + y.float() + 0.25 * torch.randn(n, generator=g)
    angle = 2 * math.pi * torch.rand(n, generator=g)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1), y     # X: [n, 2], y: [n]


def member_losses(model: nn.Module, population, X: torch.Tensor, y: torch.Tensor,
                  members: torch.Tensor | None = None, flat: bool = False) -> torch.Tensor:
    """Cross-entropy of each member in `members` (default: all) from one batched forward → [len(members)].

    Default layout: one batch row per member holding all samples along the sequence axis, x: [k, B, 2].
    flat: the inputs repeated once per member, one sample per row, x: [k * B, 2] (rows from population_rows).
    """
    B = X.shape[0]
    if flat:
        rows = population_rows(population, B) if members is None else members.repeat_interleave(B)
        k = rows.numel() // B
        population.set_rows(rows)
        logits = model(X.repeat(k, 1)).view(k, B, -1)
    else:
        rows = population_rows(population, 1) if members is None else members
        k = rows.numel()
        population.set_rows(rows)
        logits = model(X.expand(k, -1, -1))                                          # [k, B, 2]
    return F.cross_entropy(logits.transpose(1, 2), y.expand(k, -1), reduction="none").mean(dim=1)


def rank_scorer(X: torch.Tensor, y: torch.Tensor):
    """score_population: centred ranks of −cross-entropy (OpenAI-ES shaping)."""
    return lambda model, population: centered_rank_fitness(-member_losses(model, population, X, y)[:, None])


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(X).argmax(-1) == y).float().mean())


def deltas(es) -> dict[str, torch.Tensor]:
    return {name: layer.delta_weight().clone() for name, layer in es.layers.items()}


def fill_adapters(es, scale: float = 0.1, seed: int = 1) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in es.layers.values():
            for buffer in layer.buffers(recurse=False):
                buffer.copy_(torch.randn(buffer.shape, generator=g) * scale)


def fixed(fitness: torch.Tensor):
    return lambda model, population: fitness


@setups
def test_es_raises_classifier_accuracy(setup):
    X, y = circles(256)
    model = mlp()
    start = accuracy(model, X, y)
    es = SETUPS[setup](model, population_size=32, sigma=0.1, lr=0.5, seed=0)
    for step in range(30):
        stats = es.tell(es.evaluate(rank_scorer(X, y)))
        assert stats["update_norm"] > 0
    final = accuracy(model, X, y)
    assert start < 0.6 and final > 0.85, (start, final)


@pytest.mark.parametrize("antithetic", [True, False])
@pytest.mark.parametrize("setup", ["eggroll-rank2", *SETUPS])
def test_batched_scoring_equals_each_member_with_materialised_weights(setup, antithetic):
    X, y = circles(16)
    model = mlp(hidden=8)
    base = copy.deepcopy(model)
    kw = dict(population_size=6, sigma=0.3, lr=0.1, antithetic=antithetic, seed=3, noise_reuse=2)
    if setup == "eggroll-rank2":  # rank-2 noise: checks the σ/√r scale
        es = EggrollES(model, rank=2, adapter_rank=3, **kw)
    else:
        es = SETUPS[setup](model, **kw)
    fill_adapters(es)
    step, N = 5, 6
    es.step = step  # score the population of step 5 (noise_reuse 2: the noise of steps 4-5)
    whole = es.evaluate(lambda m, pop: member_losses(m, pop, X, y))
    flat = es.evaluate(lambda m, pop: member_losses(m, pop, X, y, flat=True))
    chunked = torch.cat([es.evaluate(lambda m, pop: member_losses(m, pop, X, y, members=ids))
                         for ids in torch.arange(N).split(4)])
    assert es.population.rows is None  # evaluate resets the rows

    pop, (pairs, signs) = es.population, member_pairs(N, antithetic)
    reference = []
    for i in range(N):  # member i alone: a plain nn.Sequential with W + ΔW + its perturbation written in
        ref = copy.deepcopy(base)
        with torch.no_grad():
            for name, layer in es.layers.items():
                linear = ref.get_submodule(name)
                m, n = linear.out_features, linear.in_features
                key = noise_seed(pop.seed, step, pop.noise_reuse, layer.layer_index)
                if setup == "openai-es":
                    noise = dense_noise(key, pop.num_pairs, m, n, "cpu")[pairs[i]]
                else:
                    A, B = layer_noise(key, pop.num_pairs, m, n, pop.rank, "cpu")
                    noise = A[pairs[i]] @ B[pairs[i]].T / math.sqrt(pop.rank)
                linear.weight += layer.delta_weight() + signs[i] * pop.sigma * noise
            reference.append(F.cross_entropy(ref(X), y))
    reference = torch.stack(reference)
    assert not torch.allclose(reference, reference[0].expand(N), atol=1e-3)  # members do differ
    for got in (whole, flat, chunked):
        torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("antithetic", [True, False])
@pytest.mark.parametrize("setup", ["eggroll-full", "openai-es"])
def test_update_is_the_es_gradient_estimate(setup, antithetic):
    """Δ after one step from zero = lr · 1/N Σ_i f_i s_i · noise_i, noise_i = A_i B_iᵀ (rank 1) or E_i."""
    N, step, lr = 6, 2, 0.3
    model = mlp(hidden=8)
    es = SETUPS[setup](model, population_size=N, sigma=0.05, lr=lr, antithetic=antithetic, seed=4)
    fitness = torch.linspace(-1.0, 2.0, N)
    es.step = step
    es.tell(es.evaluate(fixed(fitness)))
    pairs, signs = member_pairs(N, antithetic)
    for name, layer in es.layers.items():
        m, n = layer.out_features, layer.in_features
        key = noise_seed(4, step, 1, layer.layer_index)
        if setup == "openai-es":
            noise = dense_noise(key, es.population.num_pairs, m, n, "cpu")
        else:
            A, B = layer_noise(key, es.population.num_pairs, m, n, 1, "cpu")
            noise = A @ B.transpose(1, 2)                                             # [P, m, n]
        expected = lr / N * sum(fitness[i] * signs[i] * noise[pairs[i]] for i in range(N))
        torch.testing.assert_close(layer.delta_weight(), expected, atol=1e-6, rtol=1e-5)


@setups
@pytest.mark.parametrize("fitness", ["zeros", "all-equal"])
def test_flat_fitness_leaves_adapters_unchanged(setup, fitness):
    X, y = circles(64)
    es = SETUPS[setup](mlp(), population_size=8, sigma=0.1, lr=0.5, seed=0)
    es.tell(es.evaluate(rank_scorer(X, y)))
    before = deltas(es)
    assert any(bool(d.any()) for d in before.values())
    # antithetic pairs cancel a constant fitness exactly: f·(+1) + f·(−1) = 0
    flat = torch.zeros(8) if fitness == "zeros" else torch.full((8,), 3.0)
    stats = es.tell(es.evaluate(fixed(flat)))
    assert stats["update_norm"] < 1e-5
    for name, after in deltas(es).items():
        assert torch.isfinite(after).all()
        torch.testing.assert_close(after, before[name], atol=1e-6, rtol=1e-5)


@setups
def test_same_seed_same_adapters_other_seed_different(setup):
    X, y = circles(64)

    def run(seed: int) -> dict[str, torch.Tensor]:
        es = SETUPS[setup](mlp(), population_size=8, sigma=0.1, lr=0.5, seed=seed)
        for step in range(3):
            es.tell(es.evaluate(rank_scorer(X, y)))
        return deltas(es)

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.allclose(first[k], other[k]) for k in first)


@setups
def test_momentum_adds_the_previous_step(setup):
    """Heavy ball: Δ₂(μ) − Δ₂(0) = μ · lr · g₁ = μ · Δ₁(0) for fixed fitness (exact: sums stay within rank 8)."""
    f1, f2, mu = torch.tensor([1.0, -0.5, 0.3, 0.8]), torch.tensor([-0.2, 0.9, 0.4, -1.0]), 0.5

    def run(momentum: float) -> tuple[dict, dict]:
        es = SETUPS[setup](mlp(hidden=8), population_size=4, sigma=0.1, lr=0.2, seed=0, momentum=momentum)
        es.tell(es.evaluate(fixed(f1)))
        first = deltas(es)
        es.tell(es.evaluate(fixed(f2)))
        return first, deltas(es)

    (plain1, plain2), (heavy1, heavy2) = run(0.0), run(mu)
    for k in plain1:
        torch.testing.assert_close(heavy1[k], plain1[k], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(heavy2[k] - plain2[k], mu * plain1[k], atol=1e-5, rtol=1e-4)
    assert not all(torch.allclose(heavy2[k], plain2[k]) for k in plain2)


@setups
def test_weight_decay_shrinks_the_adapter(setup):
    lr, wd = 0.5, 0.4
    es = SETUPS[setup](mlp(hidden=8), population_size=4, sigma=0.1, lr=lr, seed=0, weight_decay=wd)
    fill_adapters(es)
    before = deltas(es)
    es.tell(es.evaluate(fixed(torch.zeros(4))))  # no signal: only the decay acts
    for name, after in deltas(es).items():
        torch.testing.assert_close(after, (1 - lr * wd) * before[name], atol=1e-6, rtol=1e-5)
        assert after.norm() < before[name].norm()


@setups
def test_resume_from_state_dict_equals_uninterrupted_run(setup):
    X, y = circles(64)
    kw = dict(population_size=8, sigma=0.1, lr=0.3, seed=0, momentum=0.9)
    score = rank_scorer(X, y)

    whole = SETUPS[setup](mlp(), **kw)
    for _ in range(4):
        whole.tell(whole.evaluate(score))

    first = SETUPS[setup](mlp(), **kw)
    for _ in range(2):
        first.tell(first.evaluate(score))
    state = copy.deepcopy(first.state_dict())
    assert int(state["es.step"]) == 2 and any(k.startswith("optimizer.") for k in state)  # momentum is saved

    def resumed(restore_momentum: bool) -> dict[str, torch.Tensor]:
        es = SETUPS[setup](mlp(), **kw)
        es.load_state_dict({k: v for k, v in state.items() if restore_momentum or not k.startswith("optimizer.")})
        assert es.step == 2
        for _ in range(2):
            es.tell(es.evaluate(score))
        return deltas(es)

    expected, restored, forgotten = deltas(whole), resumed(True), resumed(False)
    for k in expected:
        torch.testing.assert_close(restored[k], expected[k], atol=1e-6, rtol=0)
    assert not all(torch.allclose(forgotten[k], expected[k], atol=1e-6) for k in expected)


@setups
@pytest.mark.parametrize("shape", [(9,), (7, 2), (8, 2, 1), ()])
def test_bad_score_shape_raises(setup, shape):
    es = SETUPS[setup](mlp(hidden=8), population_size=8, sigma=0.1, lr=0.1)
    scores = es.evaluate(fixed(torch.zeros(shape)))
    with pytest.raises(ValueError, match="scores have shape"):
        es.tell(scores)
    assert es.step == 0  # a refused tell does not advance the step


def test_tell_shapes_raw_scores_per_prompt():
    """tell(scores [N, J], prompt_ids) = the step with group-centred fitness computed from those scores."""
    scores = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    prompt_ids = torch.tensor([[0, 1], [0, 1], [2, 3], [2, 3]])
    shaped = EggrollES(mlp(hidden=8), population_size=4, sigma=0.1, lr=0.2, adapter_rank="full", seed=0)
    given = EggrollES(mlp(hidden=8), population_size=4, sigma=0.1, lr=0.2, adapter_rank="full", seed=0,
                      fitness="none")
    shaped.tell(scores, prompt_ids)
    # by hand: centre each prompt's scores over the members that answered it, divide by the std of all scores
    mu = {0: 0.5, 1: 0.0, 2: 0.5, 3: 1.0}
    centred = torch.tensor([[s - mu[int(q)] for s, q in zip(row, ids)] for row, ids in zip(scores, prompt_ids)])
    given.tell(centred.mean(dim=1) / (scores.std(correction=0) + 1e-8))
    for name in shaped.layers:
        torch.testing.assert_close(shaped.layers[name].delta_weight(), given.layers[name].delta_weight())
    assert shaped.step == given.step == 1


def test_openai_es_perturbs_the_same_layers_as_eggroll():
    targets = ["2", "4"]
    eggroll = EggrollES(mlp(), population_size=4, sigma=0.1, lr=0.1, target_modules=targets)
    openai = OpenAIES(mlp(), population_size=4, sigma=0.1, lr=0.1, target_modules=targets)
    assert list(openai.layers) == list(eggroll.layers) == targets
    assert [m.layer_index for m in openai.layers.values()] == [m.layer_index for m in eggroll.layers.values()]
    assert isinstance(openai.model[0], nn.Linear)  # untargeted layers stay plain


@pytest.mark.parametrize("bad", [dict(momentum=1.0), dict(momentum=-0.1), dict(weight_decay=-1.0),
                                 dict(weight_decay=30.0)])
def test_openai_es_rejects_bad_optimizer_settings(bad):
    with pytest.raises(ValueError, match="momentum|weight_decay"):
        OpenAIES(mlp(hidden=8), population_size=4, sigma=0.1, lr=0.1, **bad)
