"""Export to PEFT / vLLM / the Hub and back: a short EGGROLL run of the embedded tiny model, exported, reloaded with
PEFT, plain transformers and `load_peft_adapter`, must give the trained model's logits; bad input leaves nothing."""

import argparse
import json
import shutil
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, ModelCard
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from eggroll_llm import cli, push
from eggroll_llm.checkpoint import list_checkpoints, load_checkpoint
from eggroll_llm.config import load_config, to_dict
from eggroll_llm.data import build_prompts, load_task
from eggroll_llm.engine.hf import HFEngine
from eggroll_llm.es import EggrollES
from eggroll_llm.evaluate import DEFAULT_MAX_NEW_TOKENS, evaluate
from eggroll_llm.export import (
    VLLM_LORA_RANKS,
    ExportError,
    add_export_parser,
    default_export_rank,
    export_run,
    load_peft_adapter,
    lowrank_truncate,
)
from eggroll_llm.models import load_model, load_tokenizer
from eggroll_llm.perturbed import Population, attach_eggroll
from eggroll_llm.push import PushError, add_push_parser
from eggroll_llm.recipe import run_recipe

INPUT_IDS = torch.randint(3, 384, (2, 16), generator=torch.Generator().manual_seed(0))


def run_config(out, **es):
    # length: longer is better, so members differ even when none answers right and 2 steps give a non-zero adapter
    es = {"population_size": 4, "members_per_prompt": 2, "prompts_per_member": 4, "sigma": 0.1, "lr": 0.05,
          "adapter_rank": 2, **es}
    return load_config(None, {"output_dir": str(out), "seed": 1, "rewards": ["gsm8k", "toy_rewards:length_reward"],
                              "max_steps": 2, "eval_every": 2, "save_every": 2, "data": {"eval_limit": 6},
                              "generation": {"max_new_tokens": 48}, "es": es, "disable_tqdm": True})


def run_of(tmp_path_factory, name, **es):
    return run_recipe(run_config(tmp_path_factory.mktemp(name) / "run", **es)).run_dir


@pytest.fixture(scope="module")
def lowrank_run(tmp_path_factory):
    return run_of(tmp_path_factory, "lowrank")


@pytest.fixture(scope="module")
def exported(lowrank_run, tmp_path_factory):
    return export_run(lowrank_run, tmp_path_factory.mktemp("export") / "out", merged=True)


def fresh_layers(run, adapter_rank):
    config = load_config(run / "config.yaml")
    model = load_model("tiny-arith")
    layers = attach_eggroll(model, Population(config.es.population_size, config.es.sigma, seed=config.seed),
                            config.es.target_modules, adapter_rank=adapter_rank)
    return model, layers


def trained_model(run):
    """The trained model as the run holds it: EggrollLinear layers with the checkpoint's adapter, rows None."""
    config = load_config(run / "config.yaml")
    model = load_model("tiny-arith")
    es = EggrollES.from_config(model, config.es, config.seed)
    es.load_state_dict(load_checkpoint(list_checkpoints(run)[-1])[0])
    return model, es.layers


def logits(model):
    with torch.no_grad():
        return model(INPUT_IDS).logits


def test_export_folder_is_a_vllm_ready_peft_adapter(exported, lowrank_run):
    out = exported["out"]
    config = json.loads(open(f"{out}/adapter_config.json").read())
    assert config["r"] == 8 and config["r"] in VLLM_LORA_RANKS, "rank 2 is padded to vLLM's next rank"
    assert config["lora_alpha"] == config["r"] and config["bias"] == "none" and not config["use_dora"]
    assert config["base_model_name_or_path"] == "tiny-arith"  # portable: loads by name wherever eggroll_llm is
    tensors = load_file(f"{out}/adapter_model.safetensors")
    assert len(tensors) == 2 * exported["modules"] == 2 * 28
    assert all(k.startswith("base_model.model.model.layers.") and k.endswith((".lora_A.weight", ".lora_B.weight"))
               for k in tensors)
    assert exported["energy_kept"] == 1.0  # zero padding loses nothing
    card = ModelCard.load(f"{out}/README.md")
    assert card.data.license == "apache-2.0" and card.data.library_name == "peft"
    assert {"eggroll", "evolution-strategies", "tiny-arith"} <= set(card.data.tags)
    records = map(json.loads, (lowrank_run / "metrics.jsonl").read_text().splitlines())
    evals = [r for r in records if "eval_accuracy" in r]
    assert f"| final | {evals[-1]['step']} | {evals[-1]['eval_accuracy']:.4f} |" in card.text
    assert "population_size: 4" in card.text and "adapter_rank: 2" in card.text
    assert str(lowrank_run.parent) not in card.text  # no machine path: the card works on another machine


def test_the_model_cards_usage_snippet_runs(exported, lowrank_run):
    """The card's Python snippet, pointed at the export, loads the trained model (the embedded base by name)."""
    card = ModelCard.load(f"{exported['out']}/README.md").text
    snippet = card.split("```python\n", 1)[1].split("```", 1)[0].replace("THIS_FOLDER_OR_REPO", exported["out"])
    scope = {}
    exec(snippet, scope)  # noqa: S102 - the project's own card text
    trained = logits(trained_model(lowrank_run)[0])
    torch.testing.assert_close(logits(scope["model"].eval()), trained, atol=1e-5, rtol=1e-5)


def test_peft_round_trip_reproduces_the_trained_logits(exported, lowrank_run):
    from peft import PeftModel

    trained = logits(trained_model(lowrank_run)[0])
    base = load_model("tiny-arith")
    assert (logits(base) - trained).abs().max() > 1e-3, "the run must have moved the model for this test to bite"
    loaded = PeftModel.from_pretrained(base, exported["out"]).eval()
    # rtol: fp32 sums in another order differ by ~1e-6 relative on logits of size ~10
    torch.testing.assert_close(logits(loaded), trained, rtol=1e-5, atol=1e-5)


def test_merged_export_matches_with_plain_transformers(exported, lowrank_run):
    trained = logits(trained_model(lowrank_run)[0])
    merged = AutoModelForCausalLM.from_pretrained(exported["merged"]).eval()
    assert all(type(m).__module__.startswith(("transformers", "torch")) for m in merged.modules())
    torch.testing.assert_close(logits(merged), trained, rtol=1e-5, atol=1e-5)
    text = "Q: 12 + 30 = ?"
    assert AutoTokenizer.from_pretrained(exported["merged"])(text).input_ids == \
        load_tokenizer("tiny-arith")(text).input_ids
    assert ModelCard.load(f"{exported['merged']}/README.md").data.library_name == "transformers"


def test_an_adapted_output_head_tied_to_the_embeddings_exports_exactly(tmp_path_factory):
    """tiny-arith ties lm_head to the input embeddings. Training moves the head's output only, so a merge must untie
    the head first: merged into the shared weight, the delta would move the embeddings too (another model)."""
    run = run_of(tmp_path_factory, "head", target_modules=["lm_head"], adapter_rank=8)
    out = export_run(run, tmp_path_factory.mktemp("head-export") / "out", merged=True)
    assert set(load_file(f"{out['out']}/adapter_model.safetensors")) == {
        "base_model.model.lm_head.lora_A.weight", "base_model.model.lm_head.lora_B.weight"}
    trained, base = logits(trained_model(run)[0]), load_model("tiny-arith")
    assert (logits(base) - trained).abs().max() > 1e-3, "the run must have moved the head for this test to bite"
    for model in (load_model("tiny-arith", adapter=out["out"]), AutoModelForCausalLM.from_pretrained(out["merged"])):
        torch.testing.assert_close(logits(model.eval()), trained, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.get_input_embeddings().weight, base.get_input_embeddings().weight)


def test_cli_eval_of_the_export_matches_direct_evaluation(exported, lowrank_run, capsys):
    assert cli.main(["eval", "--adapter", exported["out"], "--json", "--limit", "20"]) == 0
    via_cli = json.loads(capsys.readouterr().out)
    tokenizer = load_tokenizer("tiny-arith")
    dataset = load_task("tiny-arith", "test", limit=20)
    prompts = build_prompts(tokenizer, dataset, task="tiny-arith")
    direct = evaluate(HFEngine(trained_model(lowrank_run)[0], tokenizer), prompts, list(dataset["answer"]),
                      max_new_tokens=DEFAULT_MAX_NEW_TOKENS["tiny-arith"], progress=False)
    assert via_cli["n"] == direct.n == 20
    assert (via_cli["accuracy"], via_cli["strict_accuracy"], via_cli["tokens"]) == \
        (direct.accuracy, direct.strict_accuracy, direct.tokens)


@pytest.mark.parametrize("adapter_rank", [2, 4, "full"])
def test_continuing_from_the_export_starts_at_the_exported_model(exported, lowrank_run, adapter_rank):
    trained = logits(trained_model(lowrank_run)[0])
    model, layers = fresh_layers(lowrank_run, adapter_rank)
    summary = load_peft_adapter(layers, exported["out"])
    assert summary["modules"] == 28 and summary["rank"] == 2, "the export's zero padding is dropped again"
    torch.testing.assert_close(logits(model), trained, rtol=1e-5, atol=1e-5)


def test_an_adapter_above_the_run_rank_is_refused_and_changes_nothing(exported, lowrank_run):
    model, layers = fresh_layers(lowrank_run, 1)
    before = logits(model)
    with pytest.raises(ExportError, match="rank 2 at .*above es.adapter_rank 1; set es.adapter_rank to at least 2"):
        load_peft_adapter(layers, exported["out"])
    torch.testing.assert_close(logits(model), before, rtol=0, atol=0)


@pytest.mark.parametrize("edit, message", [
    ({"bias": "all"}, "trains biases"),
    ({"use_dora": True}, "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "saves whole modules"),
])
def test_adapters_without_a_u_v_form_are_refused(exported, lowrank_run, tmp_path, edit, message):
    folder = shutil.copytree(exported["out"], tmp_path / "adapter", ignore=shutil.ignore_patterns("merged"))
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ExportError, match=message):
        load_peft_adapter(fresh_layers(lowrank_run, 8)[1], folder)


def test_an_adapter_of_other_modules_is_refused_by_name(exported, lowrank_run, tmp_path):
    folder = shutil.copytree(exported["out"], tmp_path / "adapter", ignore=shutil.ignore_patterns("merged"))
    tensors = load_file(str(folder / "adapter_model.safetensors"))
    save_file({k.replace("layers.0.self_attn.q_proj", "layers.0.self_attn.x_proj"): v for k, v in tensors.items()},
              str(folder / "adapter_model.safetensors"))
    with pytest.raises(ExportError, match="targets modules this run does not: model.layers.0.self_attn.x_proj"):
        load_peft_adapter(fresh_layers(lowrank_run, 8)[1], folder)


def test_rslora_scaling_is_applied(exported, lowrank_run, tmp_path):
    folder = shutil.copytree(exported["out"], tmp_path / "adapter", ignore=shutil.ignore_patterns("merged"))
    config = json.loads((folder / "adapter_config.json").read_text())
    (folder / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    _, plain = fresh_layers(lowrank_run, "full")
    _, scaled = fresh_layers(lowrank_run, "full")
    load_peft_adapter(plain, exported["out"])
    load_peft_adapter(scaled, folder)
    name = next(iter(plain))  # r = alpha = 8: scaling 1 becomes 8 / √8 = √8
    torch.testing.assert_close(scaled[name].delta, plain[name].delta * 8 ** 0.5)


def test_full_rank_run_exports_a_truncated_svd_with_its_energy(tmp_path_factory, tmp_path):
    from peft import PeftModel

    run = run_of(tmp_path_factory, "full", adapter_rank="full", population_size=16, prompts_per_member=1)
    model, layers = trained_model(run)
    result = export_run(run, tmp_path / "out", rank=8)
    energies = []
    with torch.no_grad():  # the reference: each delta replaced by its best rank-8 approximation, computed here
        for layer in layers.values():
            U, S, Vh = torch.linalg.svd(layer.delta)
            energies.append(float(S[:8].pow(2).sum() / S.pow(2).sum()))
            layer.delta.copy_(U[:, :8] * S[:8] @ Vh[:8])
    assert 0 < result["energy_kept"] < 1, "16 members x 2 steps give deltas of rank > 8"
    assert result["energy_kept"] == pytest.approx(min(energies), abs=1e-5)
    loaded = PeftModel.from_pretrained(load_model("tiny-arith"), str(tmp_path / "out")).eval()
    torch.testing.assert_close(logits(loaded), logits(model), rtol=1e-5, atol=1e-5)
    assert default_export_rank(layers) == 64  # no --rank: 64, capped by the smallest layer (k/v_proj: 64 × 128)


def test_lowrank_truncate_is_the_best_approximation():
    generator = torch.Generator().manual_seed(0)
    U, V = torch.randn(30, 6, generator=generator), torch.randn(20, 6, generator=generator)
    Ut, Vt, energy = lowrank_truncate(U, V, 2)
    left, S, right = torch.linalg.svd(U @ V.T)
    torch.testing.assert_close(Ut @ Vt.T, left[:, :2] * S[:2] @ right[:2], rtol=0, atol=1e-4)
    assert energy == pytest.approx(float(S[:2].pow(2).sum() / S.pow(2).sum()), rel=1e-5)
    torch.testing.assert_close(Ut.norm(dim=0), Vt.norm(dim=0))  # singular values split evenly


def test_runs_without_an_adapter_are_refused(lowrank_run, tmp_path):
    with pytest.raises(ExportError, match="not a run directory .no config.yaml"):
        export_run(tmp_path, tmp_path / "out")
    bare = tmp_path / "bare"
    bare.mkdir()
    shutil.copy(lowrank_run / "config.yaml", bare / "config.yaml")
    with pytest.raises(ExportError, match=r"has no checkpoint .*train \(or --resume\)"):
        export_run(bare, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rank, message", [(3, "not one vLLM accepts .1, 8, 16, 32, 64, 128, 256, 320, 512"),
                                           (128, r"above min\(m, n\) = 64 of .*k_proj.*pass --rank 64 or lower")])
def test_bad_ranks_are_refused(lowrank_run, tmp_path, rank, message):
    with pytest.raises(ExportError, match=message):
        export_run(lowrank_run, tmp_path / "out", rank=rank)
    assert list(tmp_path.iterdir()) == []


def test_an_error_mid_export_leaves_nothing_behind(lowrank_run, tmp_path, monkeypatch):
    def broken(model, layers):
        raise RuntimeError("disk full")

    monkeypatch.setattr("eggroll_llm.export.merge_into_base", broken)  # fails after the adapter files are written
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(lowrank_run, tmp_path / "out", merged=True)
    assert list(tmp_path.iterdir()) == [], "neither the folder nor its temporary twin is left"
    export_run(lowrank_run, tmp_path / "out")
    before = {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()}
    with pytest.raises(RuntimeError, match="disk full"):
        export_run(lowrank_run, tmp_path / "out", merged=True, force=True)
    assert list(tmp_path.iterdir()) == [tmp_path / "out"]  # the previous export is intact
    assert {p.name: p.read_bytes() for p in (tmp_path / "out").iterdir()} == before


def test_an_existing_out_needs_force(lowrank_run, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    parser = argparse.ArgumentParser()
    add_export_parser(parser.add_subparsers())
    args = parser.parse_args(["export", str(lowrank_run), "--out", str(out), "--rank", "1", "--force"])
    with pytest.raises(ExportError, match="exists and is not a PEFT export"):  # --force replaces only an export
        args.func(args)
    assert (out / "keep.txt").read_text() == "mine"
    for inside in (lowrank_run, lowrank_run / "checkpoints", lowrank_run.parent):
        with pytest.raises(ExportError, match="would overwrite run directory"):
            export_run(lowrank_run, inside, force=True)
    assert list_checkpoints(lowrank_run)
    with pytest.raises(ExportError, match="is the working directory"):
        export_run(lowrank_run, Path("."), force=True)
    (out / "keep.txt").unlink()
    args.force = False
    assert args.func(args) == 0  # an empty folder is fine
    with pytest.raises(ExportError, match="holds a previous PEFT export; pass --force"):
        args.func(args)
    args.force = True
    assert args.func(args) == 0
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((out / "adapter_config.json").read_text())["r"] == 1


@pytest.fixture
def hub_calls(monkeypatch):
    """Fake HfApi uploads: records each call and the token it was made with; nothing touches the network."""
    calls = []
    for method in ("create_repo", "create_branch", "upload_folder"):
        def record(self, *args, _method=method, **kwargs):
            calls.append((_method, self.token, args, kwargs))
            return f"https://huggingface.co/{args[0] if args else kwargs['repo_id']}"
        monkeypatch.setattr(HfApi, method, record)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(push, "get_token", lambda: "hf_secret_never_shown")
    monkeypatch.setattr(push, "require_hub", lambda what, fix, **kwargs: None)  # the Hub "answers"
    return calls


def push_cli(*argv):
    parser = argparse.ArgumentParser()
    add_push_parser(parser.add_subparsers())
    args = parser.parse_args(["push", *map(str, argv)])
    return args.func(args)


def test_push_uploads_an_export_without_showing_the_token(exported, hub_calls, capsys):
    assert push_cli(exported["out"], "--repo-id", "me/tiny-eggroll", "--private", "--revision", "v1") == 0
    assert [c[0] for c in hub_calls] == ["create_repo", "create_branch", "upload_folder"]
    assert all(token == "hf_secret_never_shown" for _, token, _, _ in hub_calls)
    assert hub_calls[0][3]["private"] is True and hub_calls[1][3]["branch"] == "v1"
    assert hub_calls[2][3]["folder_path"] == exported["out"] and hub_calls[2][3]["revision"] == "v1"
    assert push_cli(exported["merged"], "--repo-id", "me/tiny-eggroll-merged") == 0  # a merged model folder is too
    printed = capsys.readouterr()
    assert "me/tiny-eggroll" in printed.out and "hf_secret" not in printed.out + printed.err


@pytest.mark.parametrize("problem, message", [("no token", "no Hugging Face token found.*hf auth login"),
                                              ("offline", "HF_HUB_OFFLINE is set"),
                                              ("not an export", "not an export.*eggroll-llm export")])
def test_push_refusals_name_the_fix_and_call_nothing(exported, hub_calls, monkeypatch, tmp_path, problem, message):
    folder = exported["out"]
    if problem == "no token":
        monkeypatch.setattr(push, "get_token", lambda: None)
    elif problem == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    else:
        folder = tmp_path
        (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(PushError, match=message):
        push_cli(folder, "--repo-id", "me/tiny-eggroll")
    assert hub_calls == []


def test_push_without_the_hub_or_with_a_broken_connection_is_one_line(exported, hub_calls, monkeypatch, capsys):
    from eggroll_llm import hub

    def unreachable(what, fix, **kwargs):
        raise hub.HubUnreachable(f"{what} needs the Hugging Face Hub, which cannot be reached; {fix}")

    monkeypatch.setattr(push, "require_hub", unreachable)
    assert cli.main(["push", exported["out"], "--repo-id", "me/tiny-eggroll"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pushing to me/tiny-eggroll needs the Hugging Face Hub" in err
    assert hub_calls == []

    def reset(self, *args, **kwargs):
        raise ConnectionResetError("connection reset by peer")

    monkeypatch.setattr(push, "require_hub", lambda what, fix, **kwargs: None)
    monkeypatch.setattr(HfApi, "upload_folder", reset)
    assert cli.main(["push", exported["out"], "--repo-id", "me/tiny-eggroll"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "failed on the network (ConnectionResetError" in err
    assert "hf_secret" not in err


def test_a_run_started_from_the_export_evaluates_as_the_exported_model(exported, lowrank_run, tmp_path):
    config = to_dict(load_config(lowrank_run / "config.yaml"))
    config["output_dir"], config["model"]["adapter"] = str(tmp_path / "continued"), exported["out"]
    run = run_recipe(load_config(None, config)).run_dir
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    records = map(json.loads, (lowrank_run / "metrics.jsonl").read_text().splitlines())
    last = [r for r in records if "eval_accuracy" in r][-1]
    assert (first["eval_accuracy"], first["eval_strict_accuracy"]) == (last["eval_accuracy"],
                                                                       last["eval_strict_accuracy"])


def test_force_never_replaces_another_runs_adapter(lowrank_run, tmp_path):
    other = tmp_path / "b"  # another run: its adapter/ holds the PEFT files, so only the run check can refuse it
    other.mkdir()
    for name in ("config.yaml", "metrics.jsonl"):
        shutil.copy(lowrank_run / name, other / name)
    shutil.copytree(lowrank_run / "adapter", other / "adapter")
    before = (other / "adapter" / "adapter_model.safetensors").read_bytes()
    with pytest.raises(ExportError, match=f"would overwrite run directory {other.resolve()}"):
        export_run(lowrank_run, other / "adapter", force=True)
    assert (other / "adapter" / "adapter_model.safetensors").read_bytes() == before
