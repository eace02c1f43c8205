"""The generic layer's batched population forward (eggroll_llm/es_layers.py): every member in one forward equals that
member alone with its parameters materialised, for Linear, Embedding and conv layers with biases, the per-member
fallback (norms, grouped or reflect-padded convs), tied weights, and every row layout; frozen parameters never move.
"""

import copy

import pytest
import torch
from torch import nn

from eggroll_llm.es import EggrollES
from eggroll_llm.noise import PopulationError
from eggroll_llm.openai_es import OpenAIES
from eggroll_llm.strategy import member_noise

STRATEGIES = {
    "eggroll-r2": lambda model, **kw: EggrollES(model, rank=2, **kw),
    "openai-es": lambda model, **kw: OpenAIES(model, **kw),
}
strategies = pytest.mark.parametrize("strategy", list(STRATEGIES))
N = 6


class TextCNN(nn.Module):
    """Embedding → Conv1d → LayerNorm (fallback) → Linear, all with their biases; ids [batch, T] → [batch, 3]."""

    def __init__(self, tied: bool = False):
        super().__init__()
        channels = 6 if tied else 5
        self.embed = nn.Embedding(11, 6)
        self.conv = nn.Conv1d(6, channels, 3, padding=1)
        self.norm = nn.LayerNorm(channels)
        self.head = nn.Linear(channels, 11 if tied else 3)
        if tied:  # the output head reads the embedding matrix, as tied language models do
            self.head.weight = self.embed.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.conv(self.embed(ids).transpose(1, 2)).transpose(1, 2)   # [batch, T, C]
        return self.head(self.norm(torch.relu(h))).mean(dim=1)


class ImageCNN(nn.Module):
    """Conv2d (stride, dilation) → grouped Conv2d and reflect-padded Conv2d (fallbacks) → MLP head; [b, 2, 9, 9]."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, stride=2, padding=1, dilation=1)
        self.dilated = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.grouped = nn.Conv2d(4, 4, 3, padding=1, groups=2)
        self.reflect = nn.Conv2d(4, 3, 3, padding=1, padding_mode="reflect", bias=False)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 25, 8), nn.Tanh(), nn.Linear(8, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.dilated(torch.relu(self.conv(x))))
        return self.head(self.reflect(torch.relu(self.grouped(h))))


def build(kind: str) -> tuple[nn.Module, torch.Tensor]:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        if kind == "image":
            return ImageCNN(), torch.randn(3, 2, 9, 9)
        return TextCNN(tied=kind == "tied"), torch.randint(0, 11, (3, 7))


def materialised(es, base: nn.Module, member: int) -> nn.Module:
    """A copy of `base` holding member i's parameters θ + s_i σ ε_k, written in by hand."""
    model, pop = copy.deepcopy(base), es.population
    pair, scale = int(pop.pairs[member]), float(pop.signs[member]) * pop.sigma
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, t in es.targets.items():
            params[name] += scale * member_noise(t, es.population.noise(t), pair)
    return model


@strategies
@pytest.mark.parametrize("kind", ["text", "tied", "image"])
def test_batched_members_equal_materialised_members(kind, strategy):
    base, x = build(kind)
    model = copy.deepcopy(base)
    es = STRATEGIES[strategy](model, population_size=N, sigma=0.2, lr=0.1, seed=2)
    es.step_index = 3
    B = x.shape[0]

    def member_major(model, population):                     # rows [0,0,0,1,1,1,…]: groups of one member
        population.set_rows(torch.arange(N).repeat_interleave(B))
        return model(x.repeat(N, *[1] * (x.dim() - 1))).view(N, B, -1)

    def interleaved(model, population):                      # rows [0,1,…,5,0,1,…]: one group per row
        population.set_rows(torch.arange(N).repeat(B))
        return model(x.repeat_interleave(N, dim=0)).view(B, N, -1).transpose(0, 1)

    got = [es.evaluate(member_major), es.evaluate(interleaved)]
    reference = torch.stack([materialised(es, base, i)(x) for i in range(N)])          # [N, B, out]
    assert not torch.allclose(reference[0], reference[1], atol=1e-3)                   # members differ
    for value in got:
        torch.testing.assert_close(value, reference, atol=1e-5, rtol=1e-4)
    es.tell(torch.randn(N))  # every target was reached by the forward: the coverage check passes


def test_tied_weight_is_one_target_perturbed_in_both_modules():
    model, _ = build("tied")
    es = EggrollES(model, population_size=N, sigma=0.1, lr=0.1)
    assert "head.weight" not in es.targets and es.targets["embed.weight"].param is model.head.weight


@strategies
def test_frozen_parameters_stay_bit_identical(strategy):
    model, x = build("image")
    model.conv.requires_grad_(False)
    model.head[1].bias.requires_grad_(False)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    es = STRATEGIES[strategy](model, population_size=N, sigma=0.2, lr=0.5)
    assert set(frozen).isdisjoint(es.targets) and {"conv.weight", "conv.bias", "head.1.bias"} == set(frozen)
    assert [p.requires_grad for p in model.parameters()].count(False) == 3   # attaching froze nothing else

    def score(model, population):
        population.set_rows(torch.arange(N).repeat_interleave(3))
        return model(x.repeat(N, 1, 1, 1)).view(N, -1).sum(dim=1)

    for _ in range(2):
        es.tell(es.evaluate(score))
        es.step(lambda m: float(m(x).sum()))
    for name, p in model.named_parameters():
        assert torch.equal(p, frozen[name]) if name in frozen else not torch.equal(p, base_value(name))


def base_value(name: str) -> torch.Tensor:
    return dict(build("image")[0].named_parameters())[name]


@strategies
def test_member_scoring_restores_the_centre_exactly_even_when_it_raises(strategy):
    model, x = build("text")
    centre = copy.deepcopy(model.state_dict())
    es = STRATEGIES[strategy](model, population_size=N, sigma=0.3, lr=0.1)
    seen = []

    def failing(m: nn.Module) -> float:
        seen.append(m.conv.weight.detach().clone())
        if len(seen) == 3:
            raise RuntimeError("reward server down")
        return float(m(x).sum())

    with pytest.raises(RuntimeError, match="reward server down"):
        es.step(failing)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in centre.items())      # bit-identical
    assert not torch.equal(seen[0], seen[1]) and es.step_index == 0
    metrics = es.step(lambda m: float(m(x).sum()))  # many members written and restored, then one update
    assert es.step_index == 1 and metrics["update_norm"] > 0


def test_parameter_read_outside_its_module_forward_is_refused():
    """nn.MultiheadAttention reads out_proj.weight itself, so no hook sees it: the step names it, not a silent no-op.
    (in_proj_weight belongs to the attention module itself and goes through the per-member fallback.)"""
    model = nn.MultiheadAttention(4, 2, batch_first=True)
    es = EggrollES(model, population_size=N, sigma=0.1, lr=0.1)
    x = torch.randn(N, 3, 4)

    def score(model, population):
        population.set_rows(torch.arange(N))
        return model(x, x, x)[0].sum(dim=(1, 2))

    scores = es.evaluate(score)
    with pytest.raises(ValueError, match="never perturbed out_proj.weight, out_proj.bias"):
        es.tell(scores)
    es.step(lambda m: float(m(x[:1], x[:1], x[:1])[0].sum()))  # the per-member path is exact here


def test_rows_that_do_not_match_the_batch_are_refused():
    model, x = build("text")
    es = EggrollES(model, population_size=N, sigma=0.1, lr=0.1)
    population = es.ask()
    population.set_rows(torch.arange(N))
    with pytest.raises(PopulationError, match="6 member ids set but Embedding got a batch of 3 rows"):
        model(x)


def test_targets_follow_target_modules_and_param_filter():
    model, _ = build("image")
    es = EggrollES(model, population_size=N, sigma=0.1, lr=0.1, target_modules=["conv", "head.3"],
                   param_filter=lambda name, p: name.endswith("weight"))
    assert list(es.targets) == ["conv.weight", "head.3.weight"]
    assert [t.matrix for t in es.targets.values()] == [(4, 2 * 9), (3, 8)]   # conv kernel as [out, in·k·k]
    with pytest.raises(ValueError, match="no parameter of ImageCNN selected.*head.3.bias"):
        EggrollES(model, population_size=N, sigma=0.1, lr=0.1, target_modules=["missing"])


def test_fallback_reruns_a_module_with_tuple_outputs_per_member():
    """in_proj_weight belongs to nn.MultiheadAttention itself: the fallback re-runs it once per member."""
    base = nn.MultiheadAttention(4, 2, batch_first=True)
    model = copy.deepcopy(base)
    es = EggrollES(model, population_size=N, sigma=0.2, lr=0.1, rank=2, param_filter=lambda n, p: "in_proj" in n)
    x = torch.randn(2, 3, 4)

    def score(model, population):
        population.set_rows(torch.arange(N).repeat_interleave(2))
        xs = x.repeat(N, 1, 1)
        return model(xs, xs, xs)[0].view(N, 2, 3, 4)

    got = es.evaluate(score)
    reference = torch.stack([materialised(es, base, i)(x, x, x)[0] for i in range(N)])
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-4)


class Scaled(nn.Module):
    """A custom module with a parameter of its own around a Linear child: the fallback re-runs it per member, and the
    child's hook then sees only that member's rows."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(3, 4)
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, 4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x) * self.scale


def test_fallback_module_with_a_hooked_child_equals_materialised_members():
    with torch.random.fork_rng():
        torch.manual_seed(0)
        base = nn.Sequential(Scaled(), nn.Tanh(), nn.Linear(4, 2))
    model, x = copy.deepcopy(base), torch.randn(5, 3)
    es = EggrollES(model, population_size=N, sigma=0.2, lr=0.1, rank=2)

    def score(model, population):
        population.set_rows(torch.arange(N).repeat_interleave(5))
        return model(x.repeat(N, 1)).view(N, 5, 2)

    got = es.evaluate(score)
    reference = torch.stack([materialised(es, base, i)(x) for i in range(N)])
    torch.testing.assert_close(got, reference, atol=1e-5, rtol=1e-4)
