"""The ES core (eggroll_llm/es.py) in its four set-ups: EGGROLL in place (the generic default), OpenAI-ES in place
(eggroll_llm/openai_es.py), and EGGROLL's adapter mode with a low-rank and a dense adapter (the LLM trainer's).

Every check runs on a small MLP classifier with biases; batched scoring is ONE forward over the population.
"""

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from eggroll_llm.es import EggrollES
from eggroll_llm.fitness import centered_rank_fitness
from eggroll_llm.noise import layer_noise, member_pairs, noise_seed
from eggroll_llm.openai_es import OpenAIES

# fitness "none": the scorers below hand tell() fitness they shaped themselves (centred ranks, or fixed values)
SETUPS = {
    "eggroll": lambda model, **kw: EggrollES(model, rank=1, fitness="none", **kw),
    "openai-es": lambda model, **kw: OpenAIES(model, fitness="none", **kw),
    "adapter-r8": lambda model, **kw: EggrollES(model, rank=1, adapter_rank=8, fitness="none", **kw),
    "adapter-full": lambda model, **kw: EggrollES(model, rank=1, adapter_rank="full", fitness="none", **kw),
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
                  members: torch.Tensor | None = None, layout: str = "rows") -> torch.Tensor:
    """Cross-entropy of each member in `members` (default: all) from one batched forward → [len(members)].

    rows: one batch row per member holding all samples, x [k, B, 2] (contiguous); shared: the same, as a stride-0
    expand of X; flat: the inputs repeated once per member, one sample per row, x [k·B, 2] (population_rows).
    """
    B = X.shape[0]
    members = torch.arange(population.population_size) if members is None else members
    k = members.numel()
    if layout == "flat":
        population.set_rows(members.repeat_interleave(B))
        logits = model(X.repeat(k, 1)).view(k, B, -1)
    else:
        population.set_rows(members)
        x = X.expand(k, -1, -1)
        logits = model(x if layout == "shared" else x.contiguous())                  # [k, B, 2]
    return F.cross_entropy(logits.transpose(1, 2), y.expand(k, -1), reduction="none").mean(dim=1)


def rank_scorer(X: torch.Tensor, y: torch.Tensor):
    """score_population: centred ranks of −cross-entropy (OpenAI-ES shaping)."""
    return lambda model, population: centered_rank_fitness(-member_losses(model, population, X, y)[:, None])


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(X).argmax(-1) == y).float().mean())


def learned(es) -> dict[str, torch.Tensor]:
    """What the ES has moved: the adapters' ΔW (adapter mode) or the target parameters themselves (in place)."""
    if es.layers:
        return {name: layer.delta_weight().clone() for name, layer in es.layers.items()}
    return {name: t.param.detach().clone() for name, t in es.targets.items()}


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


def member_noise(es, name: str, shape, pair: int, step: int) -> torch.Tensor:
    """ε of one member, rebuilt here from its key: rank-r A Bᵀ/√r for matrices (EGGROLL), dense otherwise."""
    pop = es.population
    index = es.layers[name].layer_index if es.layers else es.targets[name].index
    key = noise_seed(pop.seed, step, pop.noise_reuse, index)
    if len(shape) == 2 and not isinstance(es, OpenAIES):
        A, B = layer_noise(key, pop.num_pairs, *shape, pop.rank, "cpu")
        return A[pair] @ B[pair].T / math.sqrt(pop.rank)
    return torch.randn(pop.num_pairs, *shape, generator=torch.Generator().manual_seed(key))[pair]


@pytest.mark.parametrize("antithetic", [True, False])
@pytest.mark.parametrize("setup", ["eggroll-rank2", "adapter-rank2", *SETUPS])
def test_batched_scoring_equals_each_member_with_materialised_weights(setup, antithetic):
    X, y = circles(16)
    model = mlp(hidden=8)
    base = copy.deepcopy(model)
    kw = dict(population_size=6, sigma=0.3, lr=0.1, antithetic=antithetic, seed=3, noise_reuse=2)
    if setup.endswith("rank2"):  # rank-2 noise: checks the σ/√r scale
        es = EggrollES(model, rank=2, adapter_rank=3 if setup.startswith("adapter") else None, **kw)
    else:
        es = SETUPS[setup](model, **kw)
    fill_adapters(es)
    step, N = 5, 6
    es.step_index = step  # score the population of step 5 (noise_reuse 2: the noise of steps 4-5)
    got = {layout: es.evaluate(lambda m, pop: member_losses(m, pop, X, y, layout=layout))
           for layout in ("rows", "shared", "flat")}
    got["chunked"] = torch.cat([es.evaluate(lambda m, pop: member_losses(m, pop, X, y, members=ids))
                                for ids in torch.arange(N).split(4)])
    assert es.population.rows is None  # evaluate resets the rows

    pairs, signs = member_pairs(N, antithetic)
    reference = []
    for i in range(N):  # member i alone: a plain nn.Sequential with its parameters written in
        ref = copy.deepcopy(base)
        with torch.no_grad():
            if es.layers:  # adapter mode: W + ΔW + the member's perturbation of each target weight
                for name, layer in es.layers.items():
                    w = ref.get_submodule(name).weight
                    w += layer.delta_weight() + signs[i] * es.population.sigma * member_noise(
                        es, name, w.shape, pairs[i], step)
            else:  # in place: every parameter, biases included
                for name, p in ref.named_parameters():
                    p += signs[i] * es.population.sigma * member_noise(es, name, p.shape, pairs[i], step)
            reference.append(F.cross_entropy(ref(X), y))
    reference = torch.stack(reference)
    assert not torch.allclose(reference, reference[0].expand(N), atol=1e-3)  # members do differ
    for layout, losses in got.items():
        torch.testing.assert_close(losses, reference, atol=1e-5, rtol=1e-5, msg=layout)


@pytest.mark.parametrize("antithetic", [True, False])
@pytest.mark.parametrize("setup", ["eggroll", "openai-es", "adapter-full"])
def test_update_is_the_es_gradient_estimate(setup, antithetic):
    """The change after one step = lr · 1/N Σ_i f_i s_i ε_i, ε_i = A_i B_iᵀ (rank 1) or E_i; biases too in place."""
    N, step, lr = 6, 2, 0.3
    model = mlp(hidden=8)
    es = SETUPS[setup](model, population_size=N, sigma=0.05, lr=lr, antithetic=antithetic, seed=4)
    start = learned(es)
    fitness = torch.linspace(-1.0, 2.0, N)
    es.step_index = step
    es.tell(es.evaluate(fixed(fitness)))
    pairs, signs = member_pairs(N, antithetic)
    for name, after in learned(es).items():
        expected = lr / N * sum(fitness[i] * signs[i] * member_noise(es, name, after.shape, pairs[i], step)
                                for i in range(N))
        torch.testing.assert_close(after - start[name], expected, atol=1e-6, rtol=1e-5)
    if not es.layers:
        assert any(name.endswith("bias") for name in start)


@setups
def test_step_with_fitness_fn_equals_the_batched_step(setup):
    """es.step(fitness_fn), one member at a time, gives the batched path's scores and the same update."""
    X, y = circles(32)
    kw = dict(population_size=8, sigma=0.1, lr=0.3, seed=5, momentum=0.5)
    batched, simple = SETUPS[setup](mlp(hidden=8), **kw), SETUPS[setup](mlp(hidden=8), **kw)
    for _ in range(2):
        losses = batched.evaluate(lambda m, pop: member_losses(m, pop, X, y))
        batched.tell(-losses)
        metrics = simple.step(lambda model: -F.cross_entropy(model(X), y))
        assert metrics["fitness_mean"] == pytest.approx(float(-losses.mean()), abs=1e-5)
        assert metrics["fitness_max"] == pytest.approx(float(-losses.min()), abs=1e-5)
    assert simple.step_index == batched.step_index == 2
    for name, value in learned(batched).items():
        torch.testing.assert_close(learned(simple)[name], value, atol=1e-4, rtol=1e-4)


@setups
@pytest.mark.parametrize("fitness", ["zeros", "all-equal"])
def test_flat_fitness_leaves_the_model_unchanged(setup, fitness):
    X, y = circles(64)
    es = SETUPS[setup](mlp(), population_size=8, sigma=0.1, lr=0.5, seed=0)
    es.tell(es.evaluate(rank_scorer(X, y)))
    before = learned(es)
    # antithetic pairs cancel a constant fitness exactly: f·(+1) + f·(−1) = 0
    flat = torch.zeros(8) if fitness == "zeros" else torch.full((8,), 3.0)
    stats = es.tell(es.evaluate(fixed(flat)))
    assert stats["update_norm"] < 1e-5
    for name, after in learned(es).items():
        assert torch.isfinite(after).all()
        torch.testing.assert_close(after, before[name], atol=1e-6, rtol=1e-5)


@setups
def test_same_seed_same_result_other_seed_different(setup):
    X, y = circles(64)

    def run(seed: int) -> dict[str, torch.Tensor]:
        es = SETUPS[setup](mlp(), population_size=8, sigma=0.1, lr=0.5, seed=seed)
        for step in range(3):
            es.tell(es.evaluate(rank_scorer(X, y)))
        return learned(es)

    first, again, other = run(0), run(0), run(1)
    assert all(torch.equal(first[k], again[k]) for k in first)
    assert not all(torch.allclose(first[k], other[k]) for k in first)


@setups
def test_momentum_adds_the_previous_step(setup):
    """Heavy ball: Δ₂(μ) − Δ₂(0) = μ · lr · g₁ = μ · Δ₁(0) for fixed fitness (exact: sums stay within rank 8)."""
    f1, f2, mu = torch.tensor([1.0, -0.5, 0.3, 0.8]), torch.tensor([-0.2, 0.9, 0.4, -1.0]), 0.5

    def run(momentum: float) -> tuple[dict, dict, dict]:
        es = SETUPS[setup](mlp(hidden=8), population_size=4, sigma=0.1, lr=0.2, seed=0, momentum=momentum)
        start = learned(es)
        es.tell(es.evaluate(fixed(f1)))
        first = learned(es)
        es.tell(es.evaluate(fixed(f2)))
        return start, first, learned(es)

    (start, plain1, plain2), (_, heavy1, heavy2) = run(0.0), run(mu)
    for k in plain1:
        torch.testing.assert_close(heavy1[k], plain1[k], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(heavy2[k] - plain2[k], mu * (plain1[k] - start[k]), atol=1e-5, rtol=1e-4)
    assert not all(torch.allclose(heavy2[k], plain2[k]) for k in plain2)


@setups
def test_weight_decay_shrinks_what_is_learned(setup):
    lr, wd = 0.5, 0.4
    es = SETUPS[setup](mlp(hidden=8), population_size=4, sigma=0.1, lr=lr, seed=0, weight_decay=wd)
    fill_adapters(es)
    before = learned(es)
    es.tell(es.evaluate(fixed(torch.zeros(4))))  # no signal: only the decay acts
    for name, after in learned(es).items():
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
        assert es.step_index == 2
        for _ in range(2):
            es.tell(es.evaluate(score))
        return learned(es)

    expected, restored, forgotten = learned(whole), resumed(True), resumed(False)
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
    assert es.step_index == 0  # a refused tell does not advance the step


@setups
def test_nan_score_raises_and_changes_nothing(setup):
    es = SETUPS[setup](mlp(hidden=8), population_size=4, sigma=0.1, lr=0.1)
    before = learned(es)
    with pytest.raises(ValueError, match="NaN or inf"):
        es.step(lambda model: float("nan"))
    assert es.step_index == 0 and all(torch.equal(v, before[k]) for k, v in learned(es).items())


def test_tell_shapes_raw_scores_per_prompt():
    """tell(scores [N, J], prompt_ids) = the step with group-centred fitness computed from those scores."""
    scores = torch.tensor([[1.0, 0.0], [0.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    prompt_ids = torch.tensor([[0, 1], [0, 1], [2, 3], [2, 3]])
    shaped = EggrollES(mlp(hidden=8), population_size=4, sigma=0.1, lr=0.2, seed=0)
    given = EggrollES(mlp(hidden=8), population_size=4, sigma=0.1, lr=0.2, seed=0, fitness="none")
    shaped.tell(scores, prompt_ids)
    # by hand: centre each prompt's scores over the members that answered it, divide by the std of all scores
    mu = {0: 0.5, 1: 0.0, 2: 0.5, 3: 1.0}
    centred = torch.tensor([[s - mu[int(q)] for s, q in zip(row, ids)] for row, ids in zip(scores, prompt_ids)])
    given.tell(centred.mean(dim=1) / (scores.std(correction=0) + 1e-8))
    assert learned(shaped).keys() == learned(given).keys()
    for name, value in learned(shaped).items():
        torch.testing.assert_close(value, learned(given)[name])
    assert shaped.step_index == given.step_index == 1


def test_openai_es_perturbs_the_same_parameters_as_eggroll():
    targets = ["2", "4"]
    eggroll = EggrollES(mlp(), population_size=4, sigma=0.1, lr=0.1, target_modules=targets)
    openai = OpenAIES(mlp(), population_size=4, sigma=0.1, lr=0.1, target_modules=targets)
    assert list(openai.targets) == list(eggroll.targets) == ["2.weight", "2.bias", "4.weight", "4.bias"]
    assert [t.index for t in openai.targets.values()] == [t.index for t in eggroll.targets.values()] == [0, 1, 2, 3]


@pytest.mark.parametrize("setup", ["eggroll", "adapter-r8"])
@pytest.mark.parametrize("bad", [dict(momentum=1.0), dict(momentum=1.5), dict(momentum=-0.1),
                                 dict(weight_decay=-1.0), dict(weight_decay=25.0), dict(lr=0.0)])
def test_bad_optimizer_settings_are_refused(setup, bad):
    kw = dict(population_size=4, sigma=0.1, lr=0.1) | bad
    with pytest.raises(ValueError, match="momentum|weight_decay|lr"):
        SETUPS[setup](mlp(hidden=8), **kw)


@pytest.mark.parametrize("setup", ["eggroll", "adapter-r8", "adapter-full"])
def test_merge_returns_the_plain_model_computing_the_same(setup):
    X, y = circles(32)
    model = mlp(hidden=8)
    es = SETUPS[setup](model, population_size=8, sigma=0.1, lr=0.5, seed=0)
    for _ in range(2):
        es.tell(es.evaluate(rank_scorer(X, y)))
    trained = model(X).detach()
    plain = es.merge()
    assert plain is model and all(type(m) in (nn.Sequential, nn.Linear, nn.ReLU) for m in plain.modules())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in plain.modules())
    torch.testing.assert_close(plain(X), trained, atol=1e-5, rtol=1e-5)
    assert list(plain.state_dict()) == list(mlp(hidden=8).state_dict())
    with pytest.raises(RuntimeError, match="merged"):
        es.step(lambda m: 0.0)


def test_weight_rms_sigma_scales_each_layers_noise_and_step():
    """sigma_scale weight_rms: member i's layer l is W + s_i σ·RMS(W_l)/√r A Bᵀ, and the step is lr·RMS(W_l)·g."""
    X = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    kw = dict(population_size=4, sigma=0.1, lr=0.2, adapter_rank="full", seed=2, fitness="none")
    plain, scaled = EggrollES(mlp(hidden=8), **kw), EggrollES(mlp(hidden=8), sigma_scale="weight_rms", **kw)
    rms = {name: float(layer.base.weight.pow(2).mean().sqrt()) for name, layer in scaled.layers.items()}
    assert len(set(rms.values())) == len(rms)  # the layers differ in scale, so the check below can fail
    population = scaled.ask()
    for member in range(4):  # batched forward == the member's materialised weights
        ref = copy.deepcopy(scaled.model)  # rows unset: the copy runs as the centre plus what is written below
        population.set_rows([member])
        with torch.no_grad():
            got = scaled.model(X[None])[0]
            pair, sign = member_pairs(4, True)[0][member], member_pairs(4, True)[1][member]
            for name, layer in scaled.layers.items():
                A, B = layer_noise(noise_seed(2, 0, 1, layer.layer_index), 2, layer.out_features, layer.in_features,
                                   1, "cpu")
                ref.get_submodule(name).base.weight += sign * 0.1 * rms[name] * A[pair] @ B[pair].T
            population.set_rows(None)
            torch.testing.assert_close(got, ref(X), atol=1e-6, rtol=1e-5)
    fitness = torch.tensor([1.0, -0.5, 0.3, 0.8])
    plain.tell(fitness)
    scaled.tell(fitness)
    for name in plain.layers:
        torch.testing.assert_close(scaled.layers[name].delta, rms[name] * plain.layers[name].delta)


def test_adam_on_the_es_gradient_resumes_exactly_and_folds_into_a_low_rank_adapter():
    X, y = circles(64)
    kw = dict(population_size=8, sigma=0.1, lr=0.05, adapter_rank="full", seed=0, optimizer="adam",
              fitness="centered_rank")
    score = lambda model, population: -member_losses(model, population, X, y)  # noqa: E731
    whole = EggrollES(mlp(), **kw)
    for _ in range(4):
        whole.tell(whole.evaluate(score))
    first = EggrollES(mlp(), **kw)
    for _ in range(2):
        first.tell(first.evaluate(score))
    resumed = EggrollES(mlp(), **kw)
    resumed.load_state_dict(copy.deepcopy(first.state_dict()))
    for _ in range(2):
        resumed.tell(resumed.evaluate(score))
    for name, layer in whole.layers.items():
        torch.testing.assert_close(resumed.layers[name].delta, layer.delta, atol=1e-7, rtol=0)
    first_step = EggrollES(mlp(), **{**kw, "fitness": "none"})
    first_step.tell(torch.tensor([1.0, -1.0, 0.5, -0.5, 0.2, -0.2, 2.0, -2.0]))
    for layer in first_step.layers.values():  # Adam's first step is ±lr in every coordinate the gradient touches
        moved = layer.delta[layer.delta.abs() > 1e-9].abs()
        torch.testing.assert_close(moved, torch.full_like(moved, 0.05), rtol=1e-4, atol=0)
    low = EggrollES(mlp(), **{**kw, "adapter_rank": 2, "fitness": "none"})   # Adam's dense step, truncated to rank 2
    low.tell(torch.tensor([1.0, -1.0, 0.5, -0.5, 0.2, -0.2, 2.0, -2.0]))
    for name, layer in low.layers.items():
        dense = first_step.layers[name].delta
        expected = torch.linalg.svd(dense).S[:2]
        torch.testing.assert_close(torch.linalg.svd(layer.delta_weight()).S[:2], expected, rtol=1e-4, atol=1e-6)
