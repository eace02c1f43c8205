"""The one ES engine (es.py): the same noise, strategies, optimizers and sigma_scale whether θ lives in place or in
an adapter; optimizers and fitness shaping as objects; the fitness levers (levers.py)."""

import math

import pytest
import torch
from torch import nn

from eggroll_llm.es import EggrollES
from eggroll_llm.fitness import shape_fitness, z_score_fitness
from eggroll_llm.levers import aggregate_samples, answer_extractor, schedule_factor
from eggroll_llm.optim import SGD, Adam
from eggroll_llm.strategy import EggrollStrategy, OpenAIStrategy, resolve_strategy

SCORES = torch.tensor([1.0, -1.0, 0.5, -0.25, 0.2, -0.7, 2.0, -2.0])


def two_layers(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 6, bias=False), nn.Tanh(), nn.Linear(6, 3, bias=False))


def weights(model):
    return [m.weight.detach().clone() for m in model if isinstance(m, nn.Linear)]


def first_update(mode, strategy, optimizer, sigma_scale="absolute"):
    """Δθ of one step on fixed scores: in place the parameters' change, in adapter mode the dense ΔW."""
    model = two_layers()
    before = weights(model)
    es = EggrollES(model, population_size=8, sigma=0.1, lr=0.05, strategy=strategy, optimizer=optimizer,
                   fitness="none", adapter_rank="full" if mode == "adapter" else None, sigma_scale=sigma_scale)
    es.ask()
    es.tell(SCORES)
    if mode == "adapter":
        return [layer.delta.clone() for layer in es.layers.values()]
    return [after - b for after, b in zip(weights(model), before)]


@pytest.mark.parametrize("strategy", ["eggroll", "openai_es", OpenAIStrategy(), EggrollStrategy(rank=3)])
@pytest.mark.parametrize("optimizer", ["sgd", lambda: SGD(0.05, momentum=0.9), lambda: Adam(0.05)])
@pytest.mark.parametrize("sigma_scale", ["absolute", "weight_rms"])
def test_a_strategy_gives_the_same_first_update_in_place_and_in_an_adapter(strategy, optimizer, sigma_scale):
    make = optimizer if callable(optimizer) else (lambda: optimizer)
    in_place = first_update("in_place", strategy, make(), sigma_scale)
    adapter = first_update("adapter", strategy, make(), sigma_scale)
    assert any(bool(d.abs().max() > 0) for d in in_place)
    for a, b in zip(in_place, adapter):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


def test_adam_in_place_steps_lr_in_every_coordinate_and_resumes_exactly():
    def run(steps, state=None):
        model = two_layers(1)
        es = EggrollES(model, population_size=8, sigma=0.1, lr=0.01, strategy="openai_es", optimizer="adam",
                       fitness="none")
        if state is not None:
            es.load_state_dict(state)
        for _ in range(steps):
            es.ask()
            es.tell(SCORES * (es.step_index + 1))
        return model, es

    model = two_layers(1)
    start = weights(model)
    one, _ = run(1)
    for before, after in zip(start, weights(one)):   # Adam's first step: ±lr wherever the dense gradient is non-zero
        torch.testing.assert_close((after - before).abs(), torch.full_like(before, 0.01), rtol=1e-4, atol=0)
    whole, _ = run(4)
    _, half = run(2)
    resumed, _ = run(2, {k: v.clone() for k, v in half.state_dict().items()})
    for a, b in zip(weights(whole), weights(resumed)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("adapter_rank", [None, "full", 2])
def test_the_per_member_path_draws_each_targets_noise_once_per_step(adapter_rank):
    model = two_layers()
    strategy = EggrollStrategy(rank=1)
    calls = []
    original = strategy.noise
    strategy.noise = lambda target, key, n: calls.append(target.name) or original(target, key, n)
    es = EggrollES(model, population_size=8, sigma=0.1, lr=0.05, strategy=strategy, adapter_rank=adapter_rank)
    es.step(lambda m: float(m(torch.ones(1, 5)).sum()))
    assert sorted(calls) == sorted(es.targets)          # every target once for 8 members, the update included
    es.step(lambda m: float(m(torch.ones(1, 5)).sum()))
    assert len(calls) == 2 * len(es.targets)


def test_members_are_written_from_the_centre_with_their_sigma_scale():
    model = two_layers()
    es = EggrollES(model, population_size=4, sigma=0.1, lr=0.05, rank=2, sigma_scale="weight_rms")
    pop = es.ask()
    centre = weights(model)
    rms = [float(w.pow(2).mean().sqrt()) for w in centre]
    with es.members() as apply:
        for member in (3, 0, 3):                         # never accumulated: member 3 twice gives the same weights
            apply(member)
            for w, c, s, t in zip(weights(model), centre, rms, es.targets.values()):
                A, B = pop.noise(t)
                k = int(pop.pairs[member])
                expected = c + float(pop.signs[member]) * 0.1 * s * (A[k] @ B[k].T) / math.sqrt(2)
                torch.testing.assert_close(w, expected, atol=1e-6, rtol=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(weights(model), centre))


def test_fitness_shaping_is_a_name_or_a_callable():
    scores = torch.tensor([[3.0, 1.0], [1.0, 1.0], [2.0, 0.0], [0.0, 2.0]])
    ids = torch.zeros_like(scores, dtype=torch.long)
    z = z_score_fitness(scores)
    torch.testing.assert_close(z.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(z.std(correction=0), torch.tensor(1.0), atol=1e-5, rtol=0)
    assert torch.equal(z_score_fitness(torch.ones(4, 3)), torch.zeros(4))
    torch.testing.assert_close(shape_fitness(scores, ids, "z_score"), z)
    mine = shape_fitness(scores, ids, lambda s, p: s[:, 0] - s[:, 1])
    assert mine.tolist() == [2.0, 0.0, 2.0, -2.0]
    with pytest.raises(ValueError, match="must return 4 finite values"):
        shape_fitness(scores, ids, lambda s, p: s[:, 0] / 0)


def test_strategies_resolve_by_name_import_path_or_object():
    assert isinstance(resolve_strategy("openai_es"), OpenAIStrategy)
    assert resolve_strategy(None, rank=3).rank == 3
    assert isinstance(resolve_strategy("eggroll_llm.strategy:OpenAIStrategy"), OpenAIStrategy)
    with pytest.raises(ValueError, match="unknown strategy 'cma'"):
        resolve_strategy("cma")
    with pytest.raises(ValueError, match="not a subclass"):
        resolve_strategy("eggroll_llm.optim:SGD.__init__")


def test_schedules_give_the_documented_values():
    assert [schedule_factor("constant", s, 10) for s in (0, 5, 9)] == [1.0, 1.0, 1.0]
    assert [schedule_factor("linear", s, 10) for s in (0, 5)] == [1.0, 0.5]
    assert schedule_factor("cosine", 5, 10) == pytest.approx(0.5)
    assert schedule_factor("cosine", 0, 10) == 1.0
    assert schedule_factor("linear", 9, 10, floor=0.1) == pytest.approx(0.1 + 0.9 * 0.1)
    # warm-up: (step + 1) / (warmup + 1), then the decay over the remaining steps
    assert [schedule_factor("linear", s, 12, warmup_steps=3) for s in (0, 1, 2, 3)] == [0.25, 0.5, 0.75, 1.0]
    assert schedule_factor("linear", 7, 12, warmup_steps=3) == pytest.approx(1 - 4 / 9)
    assert all(schedule_factor(kind, s, 10) > 0 for kind in ("linear", "cosine") for s in range(10))


def test_pass_at_k_and_majority_vote_on_known_answers():
    # two (member, prompt) rows of K = 4 samples; gold answer 12
    texts = ["#### 12", "#### 7", "#### 7", "no answer",
             "#### 12.0", "#### 3", "#### 12", "#### 5"]
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.0])
    assert aggregate_samples(scores, 4, "mean").tolist() == [0.25, 0.5]
    assert aggregate_samples(scores, 4, "pass_at_k").tolist() == [1.0, 1.0]
    answers = [answer_extractor(None, "gsm8k")(t) for t in texts]
    assert answers[4] == answers[6] == "12"                      # 12.0 and 12 are one answer
    assert aggregate_samples(scores, 4, "majority_vote", answers).tolist() == [0.0, 1.0]
    assert aggregate_samples(torch.tensor([0.5, 0.0]), 2, "majority_vote", [None, None]).tolist() == [0.25]
    countdown = answer_extractor("countdown", None)
    assert countdown("<answer> (1 + 2) * 3 </answer>") == countdown("<answer>(1+2)*3</answer>") == "(1+2)*3"
    with pytest.raises(ValueError, match="es.answer_fn"):
        answer_extractor(None, None)
