"""Shipped recipes: every YAML under recipes/ resolves, the GPU pairs share their budget, and each GPU recipe runs
one step end to end as `train --dry_run tiny` (random init of its architecture, offline, on a CPU; the integration
tier runs all eight, the default tier one).

The dry runs need no data flag: gsm8k recipes read the GSM8K-format sample shipped in eggroll_llm/assets/ and
countdown problems are generated. Nothing downloads: the recipes' Hub models are recorded in models.ARCHS.
"""

import json
import socket
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from eggroll_llm.cli import build_parser, dashed_flags, main
from eggroll_llm.config import GSM8K_SAMPLE, DryRun, dry_run_overrides, load_config
from eggroll_llm.grpo import check_grpo
from eggroll_llm.inputs import RewardSet
from eggroll_llm.models import ARCHS, EMBEDDED_MODELS, HUB_ARCHS, SHRUNK, arch_config, random_init_model
from eggroll_llm.rundir import recorded_dry_run
from eggroll_llm.runlog import MetricsLog

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "recipes").rglob("*.yaml"))
GSM8K_RECIPES = [r for r in RECIPES if r.name.startswith("gsm8k-")]
GPU_RECIPES = GSM8K_RECIPES + [r for r in RECIPES if r.name.startswith("countdown-")]  # EGGROLL / GRPO pairs
# Published parameter counts (the models' cards on the Hub): total and, for Qwen2.5, without the embedding.
PUBLISHED = {"qwen2-0.5b": (0.49e9, 0.36e9), "qwen2-1.5b": (1.54e9, 1.31e9), "llama3-1b": (1.23e9, None)}
# `--dry_run tiny` shrinks the model, population and completions itself; a random 2-layer model needs a large sigma
# before its members' greedy completions differ at all.
SHRINK = {"eggroll": ["--es.sigma", "0.5"], "grpo": []}


def dry_run(capsys, recipe: Path, *extra: str) -> tuple[int, str, str]:
    """`train RECIPE --dry_run tiny`, with no data flag: gsm8k recipes read the shipped sample, countdown generates."""
    values = yaml.safe_load(recipe.read_text())
    task = values["data"]["task"]
    # length: separates members of a random model (the task's reward scores them all 0), so the step really updates
    rewards = ["--rewards", f"[{task.split('-')[0]}, 'toy_rewards:length_reward']", "--reward_weights", "[1, 1]"]
    code = main(["train", str(recipe), "--dry_run", "tiny", *rewards, "--no-progress", *SHRINK[values["method"]],
                 *extra])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def offline_hub(monkeypatch):
    """A Hub that refuses connections: a dry run must not need it."""
    from eggroll_llm import hub

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    hub._reachable.cache_clear()
    yield
    hub._reachable.cache_clear()


@pytest.mark.parametrize("recipe", GPU_RECIPES, ids=lambda p: p.name)
def test_every_gpu_recipe_has_a_twin_and_says_how_to_check_it(recipe):
    """EGGROLL and GRPO recipes come in pairs (compare needs both), and each header shows its own dry-run command."""
    method = "grpo" if recipe.stem.endswith("-grpo") else "eggroll"
    twin = recipe.with_name(recipe.name.replace(f"-{method}.yaml", "-grpo.yaml" if method == "eggroll" else
                                                "-eggroll.yaml"))
    assert twin.is_file(), f"{recipe.name} has no {twin.name}"
    assert f"eggroll-llm train recipes/{recipe.name} --dry_run tiny" in recipe.read_text()


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_recipe_resolves_what_load_config_does_not_check(recipe):
    """Beyond validation: the reward functions import, the model is one a dry run can build without weights, and a
    GRPO recipe passes the baseline's own checks."""
    config = load_config(recipe)
    assert RewardSet(config.rewards, config.reward_weights).funcs
    assert config.model.name in HUB_ARCHS or config.model.name in EMBEDDED_MODELS
    if config.method == "grpo":
        check_grpo(config)  # what the GRPO baseline refuses before loading anything


@pytest.mark.parametrize("recipe", [r for r in GPU_RECIPES if r.stem.endswith("-eggroll")], ids=lambda p: p.name)
def test_gpu_pairs_share_model_data_and_budget(recipe):
    eggroll = load_config(recipe)
    grpo = load_config(recipe.with_name(recipe.name.replace("-eggroll", "-grpo")))
    assert (eggroll.method, grpo.method) == ("eggroll", "grpo")
    for key in ("seed", "max_wall_s", "rewards", "reward_weights", "model", "data"):
        assert getattr(eggroll, key) == getattr(grpo, key), key
    assert eggroll.generation.max_new_tokens == grpo.generation.max_new_tokens
    assert eggroll.data.task in ("gsm8k", "countdown") and eggroll.data.data_path is None  # Hub / generated
    assert eggroll.model.name in HUB_ARCHS  # so that --dry_run builds it offline
    assert eggroll.generation.temperature == 0.0 and grpo.grpo.temperature > 0  # greedy ES, sampled GRPO
    fullrank = recipe.with_name(recipe.name.replace("-eggroll", "-es-fullrank"))
    if fullrank.is_file():  # the other ES family, on the same budget
        other = load_config(fullrank)
        for key in ("seed", "max_wall_s", "rewards", "reward_weights", "model", "data", "generation"):
            assert getattr(other, key) == getattr(eggroll, key), key
        assert (other.es.strategy, other.es.adapter_rank, other.es.population_size) == ("openai_es", None, 30)


@pytest.mark.parametrize("arch", sorted(PUBLISHED))
def test_recorded_architectures_have_the_published_size(arch):
    model, _ = random_init_model(next(h for h, a in HUB_ARCHS.items() if a == arch), device="meta")
    total = sum(p.numel() for p in model.parameters())
    embedding = model.get_input_embeddings().weight.numel()
    assert model.config.vocab_size == ARCHS[arch]["vocab_size"]  # full size keeps the real vocabulary
    want_total, want_body = PUBLISHED[arch]
    assert total == pytest.approx(want_total, rel=0.01)
    if want_body is not None:
        assert total - embedding == pytest.approx(want_body, rel=0.02)


@pytest.mark.parametrize("name", ["Qwen/Qwen2.5-1.5B-Instruct", "meta-llama/Llama-3.2-1B-Instruct"])
def test_shrunk_model_keeps_the_architecture(name):
    model, tokenizer = random_init_model(name, shrink=True)
    with torch.device("meta"):
        real = AutoModelForCausalLM.from_config(arch_config(name))
    assert type(model) is type(real)
    assert model.config.num_hidden_layers == SHRUNK["num_hidden_layers"]
    assert model.config.vocab_size == len(tokenizer)
    attention, real_attention = model.model.layers[0].self_attn, real.model.layers[0].self_attn
    assert (attention.q_proj.bias is None) == (real_attention.q_proj.bias is None)  # Qwen2's q/k/v bias
    assert model.config.rope_parameters == real.config.rope_parameters  # Llama 3's rope scaling
    assert model.config.num_attention_heads > model.config.num_key_value_heads  # grouped KV heads, as the real ones


@pytest.mark.integration
@pytest.mark.parametrize("recipe", GPU_RECIPES, ids=lambda p: p.name)
def test_gpu_recipe_dry_run_one_step(recipe, offline_hub, tmp_path, capsys):
    run = tmp_path / "run"
    code, out, err = dry_run(capsys, recipe, "--output_dir", str(run))
    assert code == 0, err
    assert str(run) in out
    records = MetricsLog(run / "metrics.jsonl").read()
    assert [r["step"] for r in records] == [0, 1] and all("eval_reward" in r for r in records)
    assert records[1]["completions"] > 0 and records[1]["eval_n"] == 2
    saved = yaml.safe_load((run / "config.yaml").read_text())
    recipe_values = yaml.safe_load(recipe.read_text())
    assert saved["model"]["name"] == recipe_values["model"]["name"]
    assert saved["model"]["dtype"] == recipe_values["model"]["dtype"]
    assert saved["max_steps"] == 1 and recorded_dry_run(run) == DryRun("tiny")  # beside the recipe, not in it
    if recipe_values["method"] == "eggroll":
        assert records[1]["update_norm"] > 0  # the fold really ran
        in_place = recipe_values["es"].get("adapter_rank", 8) is None  # full-parameter ES: the model is what trained
        assert (run / ("model/model.safetensors" if in_place else "adapter/adapter_model.safetensors")).is_file()
    else:
        assert records[1]["reward_std"] > 0
        lora_b = [t for k, t in load_file(run / "adapter" / "adapter_model.safetensors").items() if "lora_B" in k]
        assert lora_b and any(t.abs().sum() > 0 for t in lora_b)  # LoRA B starts at zero: the step moved it


def test_dry_run_needs_no_data_flag_offline_and_writes_to_a_fresh_temporary_folder(offline_hub, tmp_path, capsys,
                                                                                     monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # mkdtemp creates its folder here
    recipe = ROOT / "recipes" / "gsm8k-qwen2.5-0.5b-eggroll.yaml"
    code, out, err = dry_run(capsys, recipe)
    assert code == 0, err
    (run,) = tmp_path.glob("eggroll-dry-run-*")
    assert str(run) in out and (run / "metrics.jsonl").is_file()
    assert not Path(yaml.safe_load(recipe.read_text())["output_dir"]).exists()  # the recipe's runs/ is untouched
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["data_path"] == str(GSM8K_SAMPLE)  # the shipped sample, not the Hub
    assert (saved["es"]["population_size"], saved["generation"]["max_new_tokens"]) == (4, 8)  # a step of seconds
    assert set(saved["model"]) == set(load_config(recipe).model.__dataclass_fields__)  # no dry-run flags in it
    assert json.loads((run / "dry_run.json").read_text()) == {"mode": "tiny"}


def test_dry_run_modes_and_overrides():
    parser = build_parser()
    assert parser.parse_known_args(dashed_flags(["train", "r.yaml", "--dry_run"], parser))[0].dry_run == "full"
    assert parser.parse_known_args(["train", "r.yaml", "--dry-run", "tiny"])[0].dry_run == "tiny"
    full = dry_run_overrides("full", {"output_dir": "x", "data": {"eval_limit": 5}})
    assert "model" not in full  # how the model loads is DryRun's, not the recipe's
    assert (full["output_dir"], full["data"]["eval_limit"], full["max_steps"]) == ("x", 5, 1)  # the user's win
    assert "es" not in full and "generation" not in full  # a full dry run keeps the recipe's sizes
    tiny = dry_run_overrides("tiny", {"output_dir": "x", "generation": {"max_new_tokens": 16}})
    assert tiny["es"]["population_size"] == 4 and tiny["grpo"]["num_generations"] == 2
    assert tiny["generation"]["max_new_tokens"] == 16  # the user's override still wins
    with pytest.raises(SystemExit):
        parser.parse_known_args(dashed_flags(["train", "r.yaml", "--dry_run", "huge"], parser))


@pytest.mark.parametrize("argv, needle", [
    (["--grpo.gradient_accumulation_steps", "3"], "gradient_accumulation_steps 3 must divide the 16 completions"),
    (["--grpo.num_generations", "1"], "num_generations must be >= 2"),
])
def test_bad_grpo_recipe_is_refused_before_any_work(argv, needle, tmp_path, capsys):
    run = tmp_path / "run"
    code = main(["train", str(ROOT / "recipes" / "gsm8k-qwen2.5-0.5b-grpo.yaml"), "--output_dir", str(run), *argv])
    _, err = capsys.readouterr()
    assert code == 2 and needle in err and err.count("\n") == 1
    assert not run.exists()


def test_a_dry_run_refuses_the_vllm_engine_before_any_work(tmp_path, capsys):
    """vLLM loads the weights from model.name itself: it cannot run the random-init model a dry run builds."""
    run = tmp_path / "run"
    code = main(["train", str(ROOT / "recipes" / "gsm8k-qwen2.5-0.5b-eggroll.yaml"), "--dry_run", "tiny",
                 "--generation.engine", "vllm", "--output_dir", str(run)])
    _, err = capsys.readouterr()
    assert code == 2 and "cannot run the random-init model of a dry run" in err and err.count("\n") == 1
    assert not run.exists()


def test_recipes_of_earlier_releases_with_dry_run_flags_still_load():
    """model.dry_run_random_init / dry_run_shrink were recipe keys once; they are accepted and dropped (a dry run is
    asked for with --dry_run)."""
    config = load_config(None, {"model": {"dry_run_random_init": True, "dry_run_shrink": True, "name": "tiny-arith"}})
    assert config.model.name == "tiny-arith" and not hasattr(config.model, "dry_run_shrink")


def test_a_single_data_file_warns_that_it_is_also_the_held_out_set(tmp_path):
    from eggroll_llm.recipe import recipe_datasets

    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"text": f"q{i}"}) + "\n" for i in range(4)))
    config = load_config(None, {"data": {"task": None, "data_path": str(rows), "prompt_column": "text"}})
    with pytest.warns(UserWarning, match="is a single file, so it is both the training set and the held-out set"):
        train, held_out = recipe_datasets(config, None)
    assert train["prompt"] == held_out["prompt"]  # what the warning is about
    folder = tmp_path / "split"
    folder.mkdir()
    for split in ("train", "validation"):
        (folder / f"{split}.jsonl").write_text(rows.read_text())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recipe_datasets(load_config(None, {"data": {"task": None, "data_path": str(folder), "prompt_column": "text"}}),
                        None)
