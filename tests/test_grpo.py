"""GRPO baseline runs: EGGROLL's metrics keys and budget counts, saved adapter/model, resume, early refusal, wall stop.

Runs on the shipped tiny-arith model when it exists, else on a random-init tiny Qwen2 with a tokenizer trained
in-process (saved to a temp folder, loaded like any local model). Prompts come from small local jsonl files of
tiny-arith problems so that no run pays for the 20,000-row generated train split.
"""

import json

import datasets
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from eggroll_llm import grpo as grpo_module
from eggroll_llm import inputs as inputs_module
from eggroll_llm import recipe as recipe_module
from eggroll_llm import tiny_arith
from eggroll_llm.compare import compare
from eggroll_llm.config import ConfigError, GRPOBaselineConfig, load_config
from eggroll_llm.grpo import GRPOBaselineTrainer
from eggroll_llm.models import EMBEDDED_MODELS, resolve_model
from eggroll_llm.recipe import run_recipe
from eggroll_llm.runlog import TIMING_KEYS, MetricsLog

MAX_NEW_TOKENS = 8
PROMPTS, GENERATIONS = 2, 4
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
STEP0_KEYS = {"step", "wall_s", "completions", "tokens", "eval_accuracy", "eval_strict_accuracy", "eval_n"}
STEP_KEYS = {"step", "wall_s", "completions", "tokens", "reward_mean", "peak_mem_mb", "updates"}


@pytest.fixture(scope="module")
def model_name(tmp_path_factory) -> str:
    if EMBEDDED_MODELS["tiny-arith"].is_dir():
        return "tiny-arith"
    rows = tiny_arith.make_split("train", 200, seed=1)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator([r["question"] + "\n" + r["answer"] for r in rows], trainers.BpeTrainer(
        vocab_size=320, special_tokens=["<|pad|>", "<|end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False))
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|end|>")
    tokenizer.chat_template = CHAT_TEMPLATE
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, max_position_embeddings=512, tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id))
    folder = tmp_path_factory.mktemp("tiny-qwen2")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("arith-data")
    for split, n in (("train", 32), ("validation", 4)):
        rows = tiny_arith.make_split(split, n, seed=0)
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder


def make_config(model_name, data_dir, output_dir, grpo=None, **top):
    # parity: the share of even token ids differs between completions of any length, so even a random model learns
    values = {"method": "grpo", "output_dir": str(output_dir), "seed": 0, "max_steps": 2, "eval_every": 1,
              "save_every": 1, "rewards": ["toy_rewards:parity_reward"], "model": {"name": model_name},
              "data": {"task": "gsm8k", "data_path": str(data_dir), "eval_split": "validation", "eval_limit": 4},
              "generation": {"max_new_tokens": MAX_NEW_TOKENS}, "disable_tqdm": True,
              "grpo": {"prompts_per_step": PROMPTS, "num_generations": GENERATIONS, "learning_rate": 1e-2,
                       **(grpo or {"lora_rank": 4})}, **top}
    return load_config(None, values)


@pytest.fixture(scope="module")
def lora_run(model_name, data_dir, tmp_path_factory):
    """A 2-step LoRA run, shared by the tests that read it (a run is the slow part)."""
    return run_recipe(make_config(model_name, data_dir, tmp_path_factory.mktemp("grpo") / "run")).run_dir


def test_two_steps_log_eggroll_keys_and_count_what_was_generated(lora_run):
    records = MetricsLog(lora_run / "metrics.jsonl").read()
    assert [r["step"] for r in records] == [0, 1, 2]
    assert STEP0_KEYS <= set(records[0]) and records[0]["completions"] == records[0]["tokens"] == 0
    for r in records[1:]:
        assert STEP_KEYS | STEP0_KEYS <= set(r)  # eval_every 1: every step is evaluated
        assert r["completions"] == r["step"] * PROMPTS * GENERATIONS
        assert r["updates"] == r["step"] and r["eval_n"] == 4 and r["peak_mem_mb"] > 0
    assert 0 < records[1]["wall_s"] < records[2]["wall_s"]
    # the counts are what TRL generated: its own log of each step's completion lengths and mean reward agrees
    trl_log = json.loads((lora_run / "checkpoints" / "checkpoint-2" / "trainer_state.json").read_text())["log_history"]
    for before, r, trl in zip(records, records[1:], trl_log):
        assert trl["step"] == r["step"] and trl["reward"] == pytest.approx(r["reward_mean"])
        assert r["tokens"] - before["tokens"] == trl["completions/mean_length"] * PROMPTS * GENERATIONS


def test_lora_run_writes_config_checkpoints_and_a_trained_adapter(lora_run):
    assert (lora_run / "config.yaml").is_file()
    assert sorted(p.name for p in (lora_run / "checkpoints").glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    adapter = lora_run / "adapter"
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    weights = load_file(adapter / "adapter_model.safetensors")
    lora_b = [w for name, w in weights.items() if "lora_B" in name]
    assert lora_b and any(w.abs().sum() > 0 for w in lora_b)  # PEFT starts B at zero: GRPO moved it
    assert not (lora_run / "model").exists()


@pytest.mark.integration
def test_same_seed_gives_the_same_run(lora_run, model_name, data_dir, tmp_path):
    """TRL seeds sampling and LoRA init from the run's seed; on CPU two runs must agree but for timings."""
    again = run_recipe(make_config(model_name, data_dir, tmp_path / "again")).run_dir

    def strip(records):
        return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records if r["step"] <= 2]

    assert strip(MetricsLog(again / "metrics.jsonl").read()) == strip(MetricsLog(lora_run / "metrics.jsonl").read())


@pytest.mark.integration
def test_resume_continues_the_log_and_the_counts(lora_run, model_name, data_dir):
    config = make_config(model_name, data_dir, lora_run, max_steps=3)
    with pytest.raises(FileExistsError):
        run_recipe(config)
    run_recipe(config, resume=True)
    records = MetricsLog(lora_run / "metrics.jsonl").read()
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert records[3]["completions"] == 3 * PROMPTS * GENERATIONS and records[3]["updates"] == 3
    assert records[3]["tokens"] > records[2]["tokens"] and records[3]["wall_s"] > records[2]["wall_s"]


@pytest.mark.parametrize("bad, message", [
    ({"gradient_accumulation_steps": 3}, "gradient_accumulation_steps 3 must divide the 8 completions"),
    ({"num_generations": 1}, "num_generations must be >= 2"),
    ({"temperature": 0.0}, "temperature must be > 0"),
])
def test_bad_batch_is_refused_before_any_work(bad, message, model_name, data_dir, tmp_path, monkeypatch):
    def no_loading(*args, **kwargs):
        raise AssertionError("loaded a model or data before refusing the GRPO settings")

    for module, name in ((inputs_module, "load_base"), (grpo_module, "prepare_run_dir"),
                         (recipe_module, "task_dataset"), (recipe_module, "base_tokenizer")):
        monkeypatch.setattr(module, name, no_loading)
    with pytest.raises(ConfigError, match=message):  # the grpo section refuses it where it is built
        run_recipe(make_config(model_name, data_dir, tmp_path / "run", grpo={"lora_rank": 4, **bad}))
    assert not (tmp_path / "run").exists()


@pytest.mark.integration
def test_max_wall_s_stops_full_finetuning_early_and_saves_the_model(model_name, data_dir, tmp_path):
    config = make_config(model_name, data_dir, tmp_path / "run", grpo={"lora_rank": 0}, max_steps=50, max_wall_s=1e-3,
                         eval_every=10, save_every=10)
    run = run_recipe(config).run_dir
    records = MetricsLog(run / "metrics.jsonl").read()
    assert [r["step"] for r in records] == [0, 1]  # the first step already passes 1 ms of training
    assert records[1]["wall_s"] >= 1e-3 and "eval_accuracy" in records[1]  # the last step is always evaluated
    assert (run / "checkpoints" / "checkpoint-1").is_dir()  # a wall-clock stop ends on a resumable checkpoint
    assert (run / "model" / "model.safetensors").is_file() and (run / "model" / "tokenizer_config.json").is_file()
    assert not (run / "adapter").exists()
    before = load_file(f"{resolve_model(model_name)}/model.safetensors")
    after = load_file(run / "model" / "model.safetensors")
    assert any(not torch.equal(before[name], after[name]) for name in before)  # full fine-tuning moved the weights


@pytest.mark.integration
def test_compare_reports_a_real_grpo_run_beside_a_real_eggroll_run(lora_run, model_name, data_dir, tmp_path):
    """The issue's CI check: two small real runs (EGGROLL and GRPO, same prompts) go through `compare`."""
    es = {"population_size": 4, "members_per_prompt": 2, "prompts_per_member": 2, "sigma": 0.05, "lr": 0.05}
    eggroll_config = make_config(model_name, data_dir, tmp_path / "eggroll", method="eggroll", rewards=["gsm8k"], es=es)
    eggroll_run = run_recipe(eggroll_config).run_dir
    out = tmp_path / "report"
    compare([eggroll_run, lora_run], out)
    report = (out / "report.md").read_text()
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 2 and "eggroll" in report and "grpo" in report
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 3
    for png in pngs:
        with Image.open(png) as image:
            image.verify()  # a complete, valid PNG
            assert image.format == "PNG" and image.size[0] > 100


@pytest.mark.integration
def test_the_python_api_takes_a_conversational_dataset_and_callables(model_name, tmp_path):
    """GRPOBaselineTrainer takes what EggrollTrainer takes: chat prompts and a reward callable get TRL's columns."""
    from toy_rewards import parity_reward

    rows = [{"prompt": [{"role": "user", "content": r["question"]}], "answer": r["answer"], "row": i}
            for i, r in enumerate(tiny_arith.make_split("train", 8, seed=0))]
    seen = []

    def reward(prompts, completions, completion_ids, answer, row, **kwargs):
        seen.append((prompts[0], completions[0], len(answer), len(row)))
        return parity_reward(prompts, completions, completion_ids)

    dataset = datasets.Dataset.from_list(rows)
    args = GRPOBaselineConfig(output_dir=str(tmp_path / "py"), max_steps=1, eval_every=1, save_every=1,
                              disable_tqdm=True, generation={"max_new_tokens": MAX_NEW_TOKENS},
                              per_device_train_batch_size=PROMPTS * GENERATIONS, num_generations=GENERATIONS,
                              lora_rank=4)
    run = GRPOBaselineTrainer(model=model_name, reward_funcs=[reward], train_dataset=dataset,
                              eval_dataset=dataset.select(range(2)), args=args).train().run_dir
    # held-out evaluation at step 0 (2 prompts), TRL's step 1 (PROMPTS x GENERATIONS), held-out evaluation again
    assert [(answers, rows_seen) for _, _, answers, rows_seen in seen] == [(2, 2), (8, 8), (2, 2)]
    for prompt, completion, _, _ in seen:
        assert isinstance(prompt, list) and completion[0]["role"] == "assistant"
    records = MetricsLog(run / "metrics.jsonl").read()
    assert [r["step"] for r in records] == [0, 1] and records[1]["prompt_tokens"] > 0
    assert (run / "eval" / "step-000001.jsonl").is_file()
