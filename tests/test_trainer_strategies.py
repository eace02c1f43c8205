"""The LLM trainer with a strategy: full-parameter ES (`es.strategy: openai_es`, in place, members scored one after
another) on the embedded model, and the fitness levers through a recipe."""

import json

import pytest
import torch
from safetensors.torch import load_file

from eggroll_llm.checkpoint import list_checkpoints
from eggroll_llm.config import load_config, to_dict
from eggroll_llm.es import EggrollES
from eggroll_llm.export import export_run
from eggroll_llm.recipe import run_recipe
from eggroll_llm.runlog import TIMING_KEYS

pytestmark = pytest.mark.integration  # end-to-end trainings: the integration tier (.ci/run runs it)

FULLRANK = {"strategy": "openai_es", "adapter_rank": None, "population_size": 4, "antithetic": False,
            "members_per_prompt": 4, "prompts_per_member": 3, "sigma": 0.02, "lr": 0.01, "fitness": "z_score"}


def config(out, steps=3, es=None, **top):
    values = {"output_dir": str(out), "seed": 3, "rewards": ["gsm8k", "toy_rewards:length_reward"],
              "max_steps": steps, "eval_every": steps, "save_every": 1, "disable_tqdm": True,
              "data": {"eval_limit": 6}, "generation": {"max_new_tokens": 24}, "es": {**FULLRANK, **(es or {})},
              **top}
    return load_config(None, values)


def untimed(path):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
            for r in map(json.loads, path.read_text().splitlines())]


@pytest.fixture(scope="module")
def fullrank_run(tmp_path_factory):
    return run_recipe(config(tmp_path_factory.mktemp("fullrank") / "run")).run_dir


def test_full_parameter_es_changes_every_weight_and_keeps_the_centre_between_members(tmp_path, monkeypatch):
    centres, distances, inside = [], [], []
    ask, tell = EggrollES.ask, EggrollES.tell

    def checked_ask(self):
        population = ask(self)
        centres.append({n: t.param.detach().clone() for n, t in self.targets.items()})
        inside.append(True)
        return population

    def checked_tell(self, *args, **kwargs):  # every member was scored, and the model is its exact centre again
        assert all(torch.equal(t.param, centres[-1][n]) for n, t in self.targets.items())
        inside.clear()
        return tell(self, *args, **kwargs)

    from eggroll_llm.engine.hf import HFEngine
    generate = HFEngine.generate

    def watched_generate(engine, prompts, sampling, member_ids=None):
        if inside:  # a member's generation: plain model (no member ids), its noise written into the weights
            assert member_ids is None
            distances.append(sum(float((p.detach() - centres[-1][n]).abs().sum())
                                 for n, p in engine.model.named_parameters() if n in centres[-1]))
        return generate(engine, prompts, sampling, member_ids)

    monkeypatch.setattr(EggrollES, "ask", checked_ask)
    monkeypatch.setattr(EggrollES, "tell", checked_tell)
    monkeypatch.setattr(HFEngine, "generate", watched_generate)
    run = run_recipe(config(tmp_path / "run")).run_dir
    assert len(centres) == 3 and len(distances) == 3 * 4            # one generation per member and step
    assert all(d > 0 for d in distances) and len(set(distances)) == len(distances)
    assert all(any(not torch.equal(a[n], b[n]) for n in a) for a, b in zip(centres, centres[1:]))
    state = load_file(list_checkpoints(run)[-1] / "state.safetensors")
    assert any(k.startswith("param.") for k in state) and not any(k.startswith("adapter.") for k in state)
    assert (run / "model" / "model.safetensors").is_file() and not (run / "adapter").exists()
    records = untimed(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2, 3]
    assert all(r["sigma"] == 0.02 and r["lr"] == 0.01 for r in records[1:])


def test_full_parameter_es_resumes_exactly(fullrank_run, tmp_path):
    run_recipe(config(tmp_path / "run", steps=1))
    resumed = run_recipe(config(tmp_path / "run"), resume=True).run_dir
    training = lambda path: [{k: v for k, v in r.items() if not k.startswith("eval")}  # noqa: E731
                             for r in untimed(path / "metrics.jsonl")]
    assert training(resumed) == training(fullrank_run)
    assert untimed(resumed / "metrics.jsonl")[-1] == untimed(fullrank_run / "metrics.jsonl")[-1]
    a = load_file(list_checkpoints(resumed)[-1] / "state.safetensors")
    b = load_file(list_checkpoints(fullrank_run)[-1] / "state.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_full_model_export_evaluates_at_the_runs_final_accuracy(fullrank_run, tmp_path):
    out = export_run(fullrank_run, tmp_path / "export")
    assert out["in_place"] and (tmp_path / "export" / "README.md").is_file()
    assert "full-parameter ES" in (tmp_path / "export" / "README.md").read_text()
    recipe = to_dict(load_config(fullrank_run / "config.yaml"))
    recipe["output_dir"], recipe["model"]["name"], recipe["max_steps"] = str(tmp_path / "again"), out["out"], 1
    again = run_recipe(load_config(None, recipe)).run_dir
    start = json.loads((again / "metrics.jsonl").read_text().splitlines()[0])
    final = [r for r in untimed(fullrank_run / "metrics.jsonl") if "eval_accuracy" in r][-1]
    assert (start["eval_accuracy"], start["eval_reward"]) == (final["eval_accuracy"], final["eval_reward"])
    with pytest.raises(ValueError, match="drop --rank"):
        export_run(fullrank_run, tmp_path / "ranked", rank=8)


def test_levers_reach_the_run_and_are_recorded(tmp_path):
    es = {"strategy": "eggroll", "adapter_rank": 2, "antithetic": True, "population_size": 4,
          "members_per_prompt": 2, "prompts_per_member": 2, "samples_per_prompt": 3, "aggregate": "majority_vote",
          "sigma_schedule": "cosine", "lr_schedule": "linear", "warmup_steps": 1}
    run = run_recipe(config(tmp_path / "run", steps=2, es=es, generation={"max_new_tokens": 16,
                                                                         "temperature": 1.0})).run_dir
    records = untimed(run / "metrics.jsonl")
    assert records[-1]["completions"] == 2 * 4 * 2 * 3          # K samples of every (member, prompt)
    assert [r["lr"] for r in records[1:]] == [pytest.approx(0.005), pytest.approx(0.01)]   # warm-up, then decay
    assert records[1]["sigma"] == pytest.approx(0.02)
    saved = load_config(run / "config.yaml").es
    assert (saved.samples_per_prompt, saved.aggregate, saved.lr_schedule) == (3, "majority_vote", "linear")


def test_a_process_clock_budget_stops_on_the_runs_own_clock(tmp_path, monkeypatch):
    from eggroll_llm import runlog

    ticks = iter(range(0, 10_000, 100))  # a process clock that advances 100 s per reading
    monkeypatch.setitem(runlog.BUDGET_CLOCKS, "process", lambda: float(next(ticks)))
    es = {"strategy": "eggroll", "adapter_rank": 2, "antithetic": True, "population_size": 2,
          "members_per_prompt": 2, "prompts_per_member": 1}
    run = run_recipe(config(tmp_path / "run", steps=20, es=es, budget_clock="process", max_wall_s=150.0,
                            generation={"max_new_tokens": 4}, disable_tqdm=False)).run_dir  # the bar overshoots too
    records = untimed(run / "metrics.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2]          # 100 "seconds" a step: the budget ends after two
    assert json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])["wall_s"] == 200.0
