"""`eggroll-llm drift`: ΔW of each kind of run, its geometry on hand-made matrices, off-task KL, the interpolation's
ends against the runs' own recorded accuracy, and refusals (different bases, a missing off-task file)."""

import copy
import json
import shutil

import pytest
import torch
import yaml

from eggroll_llm import cli
from eggroll_llm.config import load_config
from eggroll_llm.drift import OffTaskProbe, drift, with_final
from eggroll_llm.drift_weights import (
    _peft_deltas,
    cosine,
    delta_stats,
    effective_rank,
    module_stats,
    run_delta,
    shared_names,
)
from eggroll_llm.export import load_run, merge_into_base
from eggroll_llm.models import load_model, load_tokenizer
from eggroll_llm.off_task import OFF_TASK_SETS, read_off_task_file
from eggroll_llm.recipe import run_recipe
from eggroll_llm.tiny_arith import SHIPPED_MODEL, make_split, pretraining_held_out

ES = {"population_size": 4, "members_per_prompt": 2, "prompts_per_member": 4, "sigma": 0.1, "lr": 0.05,
      "adapter_rank": 2, "target_modules": ["lm_head"]}
INPLACE = {"strategy": "openai_es", "adapter_rank": None, "antithetic": False, "sigma": 0.02, "lr": 0.01,
           "fitness": "z_score", "target_modules": ["down_proj"]}  # lm_head is tied: not a parameter of its own


def train(tmp_path_factory, name, seed, **es):
    # length reward: members differ even when none answers right, so two steps give a non-zero change
    config = load_config(None, {"output_dir": str(tmp_path_factory.mktemp(name) / "run"), "seed": seed,
                                "rewards": ["gsm8k", "toy_rewards:length_reward"], "max_steps": 2, "eval_every": 2,
                                "save_every": 2, "data": {"eval_limit": 6}, "generation": {"max_new_tokens": 24},
                                "es": {**ES, **es}, "disable_tqdm": True})
    return run_recipe(config).run_dir


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory):
    return train(tmp_path_factory, "adapter", 1)


@pytest.fixture(scope="module")
def inplace_run(tmp_path_factory):
    return train(tmp_path_factory, "inplace", 1, **INPLACE)


@pytest.fixture(scope="module")
def base():
    return load_model("tiny-arith")


@pytest.fixture
def off_task_file(tmp_path):
    path = tmp_path / "off.jsonl"
    rows = [{"text": "Ann has 3 cups. How many cups does Ann have now?"},
            {"prompt": "Ben has 7 pens.", "completion": " #### 7"}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_adapter_delta_is_merged_minus_base_exactly(adapter_run, base):
    run = run_delta(adapter_run, base)
    _, model, layers, _ = load_run(adapter_run)
    assert set(run.delta) == {"lm_head.weight"}
    assert torch.equal(run.delta["lm_head.weight"], layers["lm_head"].delta_weight())
    merge_into_base(model, layers)
    merged = model.get_parameter("lm_head.weight")
    assert torch.equal(base.get_parameter("lm_head.weight") + run.delta["lm_head.weight"], merged)
    assert torch.equal(run.final["lm_head.weight"], merged)
    assert run.method == "eggroll"


def test_peft_adapter_folder_gives_the_same_delta(adapter_run, base):
    """The GRPO LoRA path reads a PEFT folder; the run's own adapter/ export must give its ΔW back."""
    delta, _ = _peft_deltas(adapter_run / "adapter", base)
    expected = run_delta(adapter_run, base).delta
    assert set(delta) == set(expected)
    assert torch.allclose(delta["lm_head.weight"], expected["lm_head.weight"], atol=1e-6, rtol=1e-5)


def test_inplace_delta_is_the_checkpoint_minus_base(inplace_run, base):
    run = run_delta(inplace_run, base)
    _, model, _, _ = load_run(inplace_run)
    names = {f"model.layers.{i}.mlp.down_proj.weight" for i in range(4)}
    assert run.method == "openai_es-inplace" and set(run.delta) == names  # nothing else moved
    for name in names:
        assert torch.equal(run.final[name], model.get_parameter(name))
        assert torch.equal(run.delta[name], model.get_parameter(name) - base.get_parameter(name))


def test_norms_moved_fraction_and_rank_on_hand_made_matrices():
    delta, weight = torch.zeros(4, 5), torch.ones(4, 5)
    delta[0, 0], delta[1, 1] = 3.0, 4.0
    stats = module_stats(delta, weight)
    assert stats["delta_norm"] == pytest.approx(5.0)
    assert stats["relative_delta_norm"] == pytest.approx(5.0 / 20 ** 0.5)
    assert stats["moved_fraction"] == pytest.approx(2 / 20)
    assert stats["effective_rank"] == 2                       # 16/25 of the energy in one value: not 90%
    assert effective_rank(torch.diag(torch.tensor([10.0, 1.0, 1.0]))) == 1       # 100/102 >= 90%
    assert effective_rank(torch.diag(torch.tensor([1.0, 1.0, 1.0]))) == 3
    assert effective_rank(torch.zeros(3, 3)) == 0
    assert module_stats(torch.ones(3), torch.ones(3))["effective_rank"] is None   # 1-D: no rank

    model = torch.nn.Sequential(torch.nn.Linear(5, 4, bias=False), torch.nn.Linear(4, 3, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(1.0)
        model[1].weight.fill_(2.0)
    deltas = {"0.weight": delta, "1.weight": torch.hstack([torch.diag(torch.tensor([10.0, 1.0, 1.0])),
                                                                torch.zeros(3, 1)])}
    total = delta_stats(deltas, model)
    assert total["delta_norm"] == pytest.approx((25 + 102) ** 0.5)
    assert total["relative_delta_norm"] == pytest.approx(((25 + 102) / (20 + 4 * 12)) ** 0.5)
    assert total["moved_fraction"] == pytest.approx(5 / 32)  # over every parameter of the model
    assert total["effective_rank"] == 1.5                     # median of 2 and 1


def test_cosine_counts_a_parameter_one_run_left_alone_as_zero():
    a = {"x": torch.tensor([1.0, 0.0]), "y": torch.tensor([1.0])}
    assert cosine(a, a)["cosine"] == pytest.approx(1.0)
    assert cosine(a, {k: -2 * v for k, v in a.items()})["cosine"] == pytest.approx(-1.0)
    only_x = cosine(a, {"x": torch.tensor([3.0, 0.0])})
    assert only_x["cosine"] == pytest.approx(1 / 2 ** 0.5) and only_x["modules"] == {"x": pytest.approx(1.0),
                                                                                      "y": None}
    assert cosine({"x": torch.tensor([1.0, 0.0])}, {"x": torch.tensor([0.0, 5.0])})["cosine"] == 0.0


def test_a_tied_heads_change_is_compared_with_the_matrix_it_shares(base):
    aliases = shared_names(base)
    assert aliases == {"lm_head.weight": "model.embed_tokens.weight"}
    head = torch.randn(base.lm_head.weight.shape, generator=torch.Generator().manual_seed(0))
    tied = cosine({"lm_head.weight": head}, {"model.embed_tokens.weight": 2 * head}, aliases)
    assert tied["cosine"] == pytest.approx(1.0) and set(tied["modules"]) == {"model.embed_tokens.weight"}
    assert cosine({"lm_head.weight": head}, {"model.embed_tokens.weight": 2 * head})["cosine"] == 0.0  # no aliases


def test_kl_is_zero_for_the_base_and_positive_after_a_perturbation(base, off_task_file):
    tokenizer = load_tokenizer("tiny-arith")
    probe = OffTaskProbe(base, tokenizer, read_off_task_file(off_task_file), max_new_tokens=8)
    assert probe.kl(copy.deepcopy(base)) == 0.0
    assert probe.loss(copy.deepcopy(base)) == probe.base_loss
    noise = 0.05 * torch.randn(base.lm_head.weight.shape, generator=torch.Generator().manual_seed(0))
    tuned = with_final(base, [({"lm_head.weight": base.lm_head.weight + noise}, 0.0)])
    assert tuned.lm_head.weight is not tuned.get_input_embeddings().weight  # the tuned head was untied
    assert torch.equal(tuned.get_input_embeddings().weight, base.get_input_embeddings().weight)
    assert probe.kl(tuned) > 0.0
    assert probe.loss(tuned) != probe.base_loss


def test_interpolation_ends_reproduce_each_runs_recorded_accuracy(adapter_run, inplace_run, tmp_path):
    runs = [adapter_run, inplace_run]
    result = drift(runs, tmp_path / "drift", off_task_rows=16, progress=False)
    recorded = [[r for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
                 if "eval_accuracy" in r][-1]["eval_accuracy"] for run in runs]
    (pair,) = result["pairs"]
    assert [p["alpha"] for p in pair["interpolation"]] == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert pair["interpolation"][0]["eval_accuracy"] == recorded[0]
    assert pair["interpolation"][-1]["eval_accuracy"] == recorded[1]
    assert [r["recorded_eval_accuracy"] for r in result["runs"].values()] == recorded
    assert pair["cosine"] == 0.0  # the head and the MLPs: no parameter in common
    for run in result["runs"].values():
        assert run["off_task_kl"] > 0 and run["delta_norm"] > 0 and run["modules"]
    assert result["off_task"]["source"] == OFF_TASK_SETS["tiny-arith"][0]
    written = json.loads((tmp_path / "drift" / "drift.json").read_text())
    assert written["runs"].keys() == result["runs"].keys()
    assert (tmp_path / "drift" / "accuracy_vs_off_task_kl.png").is_file()
    assert (tmp_path / "drift" / "interpolation.png").is_file()


def test_runs_of_different_bases_are_refused_with_one_line(adapter_run, tmp_path, capsys):
    other = tmp_path / "other"
    shutil.copytree(adapter_run, other)
    config = yaml.safe_load((other / "config.yaml").read_text())
    config["model"]["name"] = str(tmp_path / "another-model")
    (other / "config.yaml").write_text(yaml.safe_dump(config))
    code = cli.main(["drift", str(adapter_run), str(other), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and "different base models" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_a_missing_off_task_file_is_one_line_and_exit_2(adapter_run, tmp_path, capsys):
    code = cli.main(["drift", str(adapter_run), "--out", str(tmp_path / "out"), "--off-task",
                     str(tmp_path / "nope.jsonl")])
    err = capsys.readouterr().err
    assert code == 2 and "nope.jsonl does not exist" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_off_task_text_is_held_out_and_deterministic():
    rows = pretraining_held_out(50)
    assert rows == pretraining_held_out(50)
    trained = {r["question"] for r in make_split("train", SHIPPED_MODEL["train_examples"], SHIPPED_MODEL["seed"])}
    assert not trained & {r["question"] for r in rows}
    validation = {r["question"] for r in make_split("validation", 200)}
    assert not validation & {r["question"] for r in rows}
    careless = sum("\n" not in r["answer"] for r in rows)
    assert 0 < careless < 50  # both answer styles of the training mix appear


def test_off_task_files_read_jsonl_and_txt(off_task_file, tmp_path):
    rows = read_off_task_file(off_task_file).rows
    assert rows == [{"prompt": "Ann has 3 cups. How many cups does Ann have now?", "completion": None},
                    {"prompt": "Ben has 7 pens.", "completion": " #### 7"}]
    txt = tmp_path / "off.txt"
    txt.write_text("one line\n\nanother\n")
    assert [r["prompt"] for r in read_off_task_file(txt).rows] == ["one line", "another"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"title": "x"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:1 has no non-empty text or prompt field"):
        read_off_task_file(bad)


@pytest.mark.integration  # drift probes over four runs
def test_compare_drift_adds_group_intervals_seed_cosine_and_who_forgets_less(adapter_run, inplace_run, base,
                                                                             tmp_path_factory, off_task_file):
    from eggroll_llm.compare import compare

    second = train(tmp_path_factory, "adapter-seed2", 2)
    out = tmp_path_factory.mktemp("compare") / "out"
    summary = compare([adapter_run, second, inplace_run], out, drift=True, off_task=off_task_file, eval_limit=2)
    plain = compare([adapter_run, second, inplace_run], tmp_path_factory.mktemp("plain") / "out")
    assert "drift" not in plain and set(summary) - set(plain) == {"drift"}  # compare's own schema is unchanged
    adapter_group = summary["runs"][next(iter(summary["runs"]))]["group"]
    seeds = summary["drift"]["groups"][adapter_group]
    expected = cosine(run_delta(adapter_run, base).delta, run_delta(second, base).delta)["cosine"]
    assert seeds["seed_cosine"]["n"] == 1 and seeds["seed_cosine"]["mean"] == pytest.approx(expected)
    assert seeds["off_task_kl"]["n"] == 2 and seeds["delta_norm"]["mean"] > 0
    for run in summary["runs"].values():
        assert run["drift"]["off_task_kl"] > 0 and "modules" in run["drift"]
    assert set(summary["drift"]["winners"]) == {"off_task_kl", "delta_norm"}
    report = (out / "report.md").read_text()
    assert "## Drift" in report and "forgets less" in report
    assert (out / "accuracy_vs_off_task_kl.png").is_file()
