"""es.decay_to_base, the retention lever: in place, weight decay pulls θ toward the starting weights (not toward 0) at
the documented rate, keep = 1 − lr·wd per step; the adapter's decay already pulls ΔW toward 0 (toward the base)."""

import pytest
import torch
from torch import nn

from eggroll_llm.config import ConfigError, load_config
from eggroll_llm.es import EggrollES


def model() -> nn.Sequential:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))


def constant(es: EggrollES) -> torch.Tensor:
    return torch.zeros(es.population.population_size)  # no signal: only the decay acts


def moved(net: nn.Module, shift: float) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        for p in net.parameters():
            p.add_(shift)
    return {n: p.detach().clone() for n, p in net.named_parameters()}


@pytest.mark.parametrize("steps", [1, 3])
def test_decay_to_base_pulls_the_change_toward_the_start_at_the_documented_rate(steps):
    lr, wd = 0.5, 0.4
    net = model()
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    es = EggrollES(net, population_size=4, sigma=0.1, lr=lr, weight_decay=wd, fitness="none", decay_to_base=True)
    trained = moved(net, 0.3)                           # a change ΔW = 0.3 the run has learned
    for _ in range(steps):
        es.tell(constant(es))
    for name, p in net.named_parameters():
        expected = start[name] + (1 - lr * wd) ** steps * (trained[name] - start[name])
        torch.testing.assert_close(p.detach(), expected, atol=1e-6, rtol=1e-5)


def test_without_it_the_decay_pulls_toward_zero():
    lr, wd = 0.5, 0.4
    net = model()
    es = EggrollES(net, population_size=4, sigma=0.1, lr=lr, weight_decay=wd, fitness="none")
    trained = moved(net, 0.3)
    es.tell(constant(es))
    for name, p in net.named_parameters():
        torch.testing.assert_close(p.detach(), (1 - lr * wd) * trained[name], atol=1e-6, rtol=1e-5)


def test_the_base_is_the_model_the_es_was_built_on_so_a_resumed_run_pulls_to_the_same_place():
    lr, wd = 0.5, 0.4
    net = model()
    start = {n: p.detach().clone() for n, p in net.named_parameters()}
    es = EggrollES(net, population_size=4, sigma=0.1, lr=lr, weight_decay=wd, fitness="none", decay_to_base=True)
    moved(net, 0.3)
    state = es.state_dict()
    resumed_net = model()
    resumed = EggrollES(resumed_net, population_size=4, sigma=0.1, lr=lr, weight_decay=wd, fitness="none",
                        decay_to_base=True)
    resumed.load_state_dict(state)
    es.tell(constant(es))
    resumed.tell(constant(resumed))
    for (name, p), q in zip(net.named_parameters(), resumed_net.parameters()):
        torch.testing.assert_close(q.detach(), p.detach(), atol=0, rtol=0)
        assert not torch.equal(p.detach(), start[name])


def test_the_config_needs_a_weight_decay_for_it():
    with pytest.raises(ConfigError, match="es.decay_to_base"):
        load_config(None, {"es": {"decay_to_base": True}})
    assert load_config(None, {"es": {"decay_to_base": True, "weight_decay": 0.1}}).es.decay_to_base
