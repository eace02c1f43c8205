"""The batched perturbed forward equals each member's materialised model (eggroll_llm/perturbed.py).

Reference for member i: a deep copy of the base model whose target weights are set to
W + U Vᵀ + s_i (σ/√r) A_i B_iᵀ, with A_i, B_i regenerated from the pure noise functions.
"""

import copy
import math

import pytest
import torch
from torch import nn
from transformers import AutoModelForCausalLM, GemmaConfig, LlamaConfig, MistralConfig, Phi3Config, Qwen2Config

from eggroll_llm.noise import PopulationError, layer_noise, member_pairs, noise_seed
from eggroll_llm.perturbed import EggrollLinear, Population, TargetModulesError, attach_eggroll, eggroll_layers

CONFIGS = {"qwen2": Qwen2Config, "llama": LlamaConfig, "mistral": MistralConfig, "gemma": GemmaConfig,
           "phi3": Phi3Config}
ATOL = 1e-5


def tiny_model(arch: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    kwargs = {"vocab_size": 100, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 64,
              "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "attn_implementation": "eager"}
    if arch != "phi3":  # Phi-3 derives head_dim = hidden / heads = 16
        kwargs["head_dim"] = 16
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(CONFIGS[arch](**kwargs)).to(dtype).eval()


def fill_adapters(layers: dict[str, EggrollLinear], scale: float = 0.1) -> None:
    with torch.no_grad():
        for layer in layers.values():
            for buffer in layer.buffers(recurse=False):
                buffer.copy_(torch.randn_like(buffer) * scale)


def member_model(base: nn.Module, layers: dict[str, EggrollLinear], pop: Population, member: int | None):
    """A copy of `base` with W + ΔW (+ member's perturbation) materialised in every target layer."""
    ref = copy.deepcopy(base)
    pairs, signs = member_pairs(pop.population_size, pop.antithetic)
    with torch.no_grad():
        for name, layer in layers.items():
            linear = ref.get_submodule(name)
            m, n = linear.out_features, linear.in_features
            W = linear.weight.float() + layer.delta_weight()
            if member is not None:
                key = noise_seed(pop.seed, pop.step, pop.noise_reuse, layer.layer_index)
                A, B = layer_noise(key, pop.num_pairs, m, n, pop.rank, "cpu")
                p = pairs[member]
                W = W + signs[member] * pop.sigma / math.sqrt(pop.rank) * A[p] @ B[p].T
            linear.weight.copy_(W.to(linear.weight.dtype))
    return ref


@pytest.mark.parametrize("adapter_rank", [2, "full"])
@pytest.mark.parametrize("arch", list(CONFIGS))
def test_batched_population_matches_each_member_prefill_and_decode(arch, adapter_rank):
    model = tiny_model(arch)
    base = copy.deepcopy(model)
    # σ = 0.1 on N(0, 1) factors dwarfs the 0.02-scale random weights: members differ as much as logits vary
    pop = Population(population_size=4, sigma=0.1, rank=2, antithetic=True, seed=3, noise_reuse=2)
    layers = attach_eggroll(model, pop, adapter_rank=adapter_rank)
    assert "lm_head" not in layers and len(layers) > 0
    fill_adapters(layers)
    step, rows = 5, torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])  # every member twice, on different prompts
    torch.manual_seed(1)
    prompt, new_tokens = torch.randint(3, 100, (8, 5)), torch.randint(3, 100, (8, 3))
    keep = torch.tensor([0, 2, 5, 7])  # rows still running after the first decoded token

    logits = []  # per step: (row indices, logits [rows, seq, vocab])
    with torch.no_grad(), pop.perturb(step, rows):
        out = model(prompt, use_cache=True)
        logits.append((torch.arange(8), out.logits))
        out = model(new_tokens[:, :1], past_key_values=out.past_key_values, use_cache=True)
        logits.append((torch.arange(8), out.logits))
        cache = out.past_key_values
        cache.batch_select_indices(keep)  # finished rows leave the batch and the cache
        pop.set_rows(rows[keep])
        for t in (1, 2):
            out = model(new_tokens[keep, t:t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            logits.append((keep, out.logits))
    assert pop.rows is None

    full = torch.cat([prompt, new_tokens], dim=1)
    with torch.no_grad():
        reference = {i: member_model(base, layers, pop, i)(full).logits for i in range(4)}  # [8, 8, vocab]
    positions = [slice(0, 5), slice(5, 6), slice(6, 7), slice(7, 8)]
    for (batch_rows, got), pos in zip(logits, positions):
        for b, row in enumerate(batch_rows.tolist()):
            expected = reference[int(rows[row])][row, pos]
            torch.testing.assert_close(got[b], expected, atol=ATOL, rtol=1e-5)
    # the perturbation matters at this sigma: antithetic twins disagree on the scale of the logits themselves
    assert (reference[0] - reference[1]).abs().max() > 0.2 * reference[0].abs().max()


@pytest.mark.parametrize("adapter_rank", [1, "full"])
def test_rows_none_is_the_adapter_only_model(adapter_rank):
    model = tiny_model("qwen2")
    base = copy.deepcopy(model)
    pop = Population(population_size=2, sigma=0.1)
    layers = attach_eggroll(model, pop, adapter_rank=adapter_rank)
    ids = torch.randint(3, 100, (2, 6))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, base(ids).logits)  # zero adapter: exactly the base model
        fill_adapters(layers)
        torch.testing.assert_close(model(ids).logits, member_model(base, layers, pop, None)(ids).logits,
                                   atol=ATOL, rtol=1e-5)
        with pop.perturb(0, [0, 1]):
            perturbed_logits = model(ids).logits
        assert not torch.allclose(perturbed_logits, model(ids).logits, atol=1e-3)


def test_adapter_updates_in_place_are_seen_by_the_next_forward():
    model = tiny_model("llama")
    base = copy.deepcopy(model)
    pop = Population(population_size=2, sigma=0.1)
    layers = attach_eggroll(model, pop)
    ids = torch.randint(3, 100, (2, 4))
    with torch.no_grad(), pop.perturb(0, [0, 1]):
        before = model(ids).logits
        fill_adapters(layers)  # the fold writes the fp32 masters in place (copy_), as here
        after = model(ids).logits
        expected = [member_model(base, layers, pop, i)(ids[i:i + 1]).logits for i in (0, 1)]
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, torch.cat(expected), atol=ATOL, rtol=1e-5)
    for layer in layers.values():
        assert torch.equal(layer.delta_weight(), layer.lora_U @ layer.lora_V.T)


def test_noise_is_drawn_once_per_step_and_gathered_once_per_rows_change(monkeypatch):
    model = tiny_model("mistral")
    pop = Population(population_size=4, sigma=0.1, noise_reuse=2)
    layers = attach_eggroll(model, pop)
    draws, gathers = [], []
    original_noise = pop.strategy.noise
    monkeypatch.setattr(pop.strategy, "noise", lambda *a: draws.append(a) or original_noise(*a))
    original = pop.row_factors
    monkeypatch.setattr(pop, "row_factors", lambda device: gathers.append(device) or original(device))
    with torch.no_grad(), pop.perturb(4, [0, 1, 2, 3]):
        out = model(torch.randint(3, 100, (4, 5)), use_cache=True)
        for _ in range(3):
            out = model(torch.randint(3, 100, (4, 1)), past_key_values=out.past_key_values, use_cache=True)
        assert len(draws) == len(layers) and len(gathers) == len(layers)
        out.past_key_values.batch_select_indices(torch.tensor([1, 3]))
        pop.set_rows([1, 3])
        model(torch.randint(3, 100, (2, 1)), past_key_values=out.past_key_values, use_cache=True)
        assert len(draws) == len(layers) and len(gathers) == 2 * len(layers)
    pop.set_step(5)  # same noise window (noise_reuse=2): nothing redrawn
    with torch.no_grad(), pop.perturb(5, [0, 1]):
        model(torch.randint(3, 100, (2, 3)))
    assert len(draws) == len(layers)
    with torch.no_grad(), pop.perturb(6, [0, 1]):
        model(torch.randint(3, 100, (2, 3)))
    assert len(draws) == 2 * len(layers)


def test_many_members_with_repeated_ids_in_one_batch():
    """Rank-1 noise (the broadcast path), 64 members, rows in no order with repeats and absent members."""
    model = tiny_model("qwen2")
    base = copy.deepcopy(model)
    pop = Population(population_size=64, sigma=0.1, rank=1, seed=7)
    layers = attach_eggroll(model, pop, adapter_rank=4)
    fill_adapters(layers)
    g = torch.Generator().manual_seed(0)
    rows, ids = torch.randint(0, 64, (96,), generator=g), torch.randint(3, 100, (96, 4), generator=g)
    assert len(rows.unique()) < 64 and len(rows.unique()) < len(rows)
    with torch.no_grad(), pop.perturb(3, rows):
        got = model(ids).logits
    with torch.no_grad():
        for member in rows.unique().tolist():
            chosen = (rows == member).nonzero()[:, 0]
            expected = member_model(base, layers, pop, member)(ids[chosen]).logits
            torch.testing.assert_close(got[chosen], expected, atol=ATOL, rtol=1e-5)


def test_base_weight_changes_are_seen_by_the_next_forward():
    model = tiny_model("qwen2")
    base = copy.deepcopy(model)
    pop = Population(population_size=2, sigma=0.1)
    layers = attach_eggroll(model, pop)
    fill_adapters(layers)
    ids = torch.randint(3, 100, (2, 5))
    with torch.no_grad():
        before = model(ids).logits
        for name, layer in layers.items():  # in place, as load_state_dict writes the base weights
            layer.base.weight.mul_(1.5)
            base.get_submodule(name).weight.mul_(1.5)
        after = model(ids).logits
        expected = member_model(base, layers, pop, None)(ids).logits
    assert not torch.allclose(before, after, atol=1e-3)
    torch.testing.assert_close(after, expected, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("adapter_rank", [2, "full"])
def test_bfloat16_adapter_is_added_on_its_own_and_counts(adapter_rank):
    """In bf16 the adapter is not merged into W (its updates would round away) but still shapes the output."""
    model = tiny_model("qwen2", torch.bfloat16)
    base = copy.deepcopy(model)
    pop = Population(population_size=2, sigma=0.05)
    layers = attach_eggroll(model, pop, adapter_rank=adapter_rank)
    fill_adapters(layers, scale=0.3)
    ids = torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])
    with torch.no_grad():
        got = model(ids).logits.float()
        expected = member_model(base.float(), layers, pop, None)(ids).logits
        unadapted = base(ids).logits.float()
    moved = (unadapted - expected).abs().max()
    assert moved > 0.1 * expected.abs().max()  # the adapter matters at this scale
    assert (got - expected).abs().max() < 0.1 * moved


def test_bfloat16_model_computes_in_its_dtype_close_to_fp32():
    model16, model32 = tiny_model("qwen2", torch.bfloat16), tiny_model("qwen2")
    logits = []
    for model in (model16, model32):
        pop = Population(population_size=2, sigma=0.05)
        torch.manual_seed(2)
        fill_adapters(attach_eggroll(model, pop), scale=0.05)
        with torch.no_grad(), pop.perturb(0, [0, 1]):
            logits.append(model(torch.tensor([[5, 6, 7, 8], [9, 10, 11, 12]])).logits)
    assert logits[0].dtype == torch.bfloat16
    scale = logits[1].abs().max()
    assert (logits[0].float() - logits[1]).abs().max() < 0.05 * scale


def test_casting_the_model_keeps_fp32_adapter_masters():
    model = tiny_model("qwen2")
    pop = Population(population_size=2, sigma=0.05)
    layers = attach_eggroll(model, pop, adapter_rank=2)
    fill_adapters(layers)
    before = {name: layer.lora_U.clone() for name, layer in layers.items()}
    model.to(torch.bfloat16)
    for name, layer in layers.items():
        assert layer.base.weight.dtype == torch.bfloat16
        assert layer.lora_U.dtype == layer.lora_V.dtype == torch.float32
        assert torch.equal(layer.lora_U, before[name])
    with torch.no_grad(), pop.perturb(0, [0, 1]):
        assert model(torch.tensor([[5, 6], [7, 8]])).logits.dtype == torch.bfloat16


class TwoLayer(nn.Module):
    """Not a transformers model: no output head, no blocks."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(6, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.tanh(self.fc1(x)))


class DoubledLinear(nn.Linear):
    """A subclass of nn.Linear whose forward is not F.linear(x, W, b) (as in quantized or adapted linears)."""

    def forward(self, x):
        return 2 * super().forward(x)


@pytest.mark.parametrize("adapter_rank", [2, "full"])
def test_linear_subclass_keeps_its_own_forward_under_an_adapter(adapter_rank):
    model = TwoLayer()
    doubled = DoubledLinear(6, 8)
    doubled.load_state_dict(model.fc1.state_dict())
    model.fc1 = doubled
    pop = Population(population_size=2, sigma=0.1)
    layers = attach_eggroll(model, pop, adapter_rank=adapter_rank)
    fill_adapters(layers)
    x = torch.randn(3, 6)
    with torch.no_grad():
        got = layers["fc1"](x)
        expected = doubled(x) + x @ layers["fc1"].delta_weight().T
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=1e-5)


def test_plain_module_default_targets_every_linear_and_2d_inputs_work():
    torch.manual_seed(0)
    model = TwoLayer()
    base = copy.deepcopy(model)
    pop = Population(population_size=6, sigma=0.3, rank=1, antithetic=False, seed=11)
    layers = attach_eggroll(model, pop)
    assert list(layers) == ["fc1", "fc2"] and [layer.layer_index for layer in layers.values()] == [0, 1]
    fill_adapters(layers)
    x = torch.randn(6, 6)
    with torch.no_grad():
        with pop.perturb(2, [5, 4, 3, 2, 1, 0]):
            got = model(x)
        for row, member in enumerate([5, 4, 3, 2, 1, 0]):
            expected = member_model(base, layers, pop, member)(x[row:row + 1])
            torch.testing.assert_close(got[row:row + 1], expected, atol=ATOL, rtol=1e-5)


def test_target_modules_follow_peft_matching():
    model = tiny_model("qwen2")
    pop = Population(population_size=2, sigma=0.1)
    layers = attach_eggroll(copy.deepcopy(model), pop, ["q_proj", "self_attn.v_proj"])
    assert list(layers) == [f"model.layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    assert [layer.layer_index for layer in layers.values()] == [0, 1, 2, 3]
    layers = attach_eggroll(copy.deepcopy(model), pop, r"model\.layers\.0\..*_proj")
    assert len(layers) == 7 and all(name.startswith("model.layers.0.") for name in layers)
    assert list(attach_eggroll(copy.deepcopy(model), pop, ["lm_head"])) == ["lm_head"]  # explicit: allowed
    layers = attach_eggroll(copy.deepcopy(model), pop, "all-linear")
    assert len(layers) == 14 and "lm_head" not in layers
    attached = copy.deepcopy(model).requires_grad_(True)
    layers = attach_eggroll(attached, pop)
    assert len(layers) == 14 and list(eggroll_layers(attached)) == list(layers)
    wrapped = {id(p) for layer in layers.values() for p in layer.parameters()}
    assert wrapped and all(p.requires_grad == (id(p) not in wrapped) for p in attached.parameters())  # rest untouched
    state = attached.state_dict()
    assert "model.layers.0.mlp.up_proj.lora_U" in state and "model.layers.0.mlp.up_proj.lora_V" in state
    with pytest.raises(TargetModulesError, match="already has EGGROLL layers"):
        attach_eggroll(attached, pop)


@pytest.mark.parametrize("target", [["qproj"], "q_proj"])  # a regex must match the full name
def test_target_matching_nothing_lists_the_linear_suffixes(target):
    with pytest.raises(TargetModulesError, match="q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"):
        attach_eggroll(tiny_model("qwen2"), Population(population_size=2, sigma=0.1), target)


@pytest.mark.parametrize("adapter_rank", [0, -1, 1.5, "half", True])
def test_bad_adapter_rank_raises(adapter_rank):
    with pytest.raises(TargetModulesError, match="adapter_rank"):
        attach_eggroll(TwoLayer(), Population(population_size=2, sigma=0.1), adapter_rank=adapter_rank)


@pytest.mark.parametrize("kwargs, field", [
    ({"population_size": 4, "sigma": 0.0}, "sigma"),
    ({"population_size": 4, "sigma": -1e-3}, "sigma"),
    ({"population_size": 4, "sigma": 1e-3, "rank": 0}, "rank"),
    ({"population_size": 0, "sigma": 1e-3, "antithetic": False}, "population_size"),
    ({"population_size": 5, "sigma": 1e-3}, "even population_size or antithetic: false"),
    ({"population_size": 4, "sigma": 1e-3, "noise_reuse": 0}, "noise_reuse"),
])
def test_bad_population_settings_raise(kwargs, field):
    with pytest.raises(PopulationError, match=field):
        Population(**kwargs)


def test_bad_rows_raise_and_perturb_resets_rows():
    model = TwoLayer()
    pop = Population(population_size=4, sigma=0.1)
    attach_eggroll(model, pop)
    with pytest.raises(PopulationError, match=r"\[0, 4\)"):
        pop.set_rows([0, 4])
    with pytest.raises(PopulationError, match="1-D"):
        pop.set_rows([[0, 1]])
    pop.set_rows([0, 1, 2])
    with pytest.raises(PopulationError, match="3 member ids set but the batch has 2 rows"):
        model(torch.randn(2, 6))
    with pytest.raises(RuntimeError, match="boom"), pop.perturb(1, [0, 1]):
        assert pop.rows.tolist() == [0, 1] and pop.step == 1
        raise RuntimeError("boom")
    assert pop.rows is None
