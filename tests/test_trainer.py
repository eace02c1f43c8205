"""The EGGROLL trainer end to end on the embedded tiny model, through a recipe (`run_recipe`, what the CLI calls):
run layout, determinism, resume, bad input. The Python API itself is tested in test_trainer_api.py."""

import json

import pytest
import torch
import yaml
from safetensors.torch import load_file

from eggroll_llm.checkpoint import list_checkpoints
from eggroll_llm.cli import main
from eggroll_llm.config import load_config, to_dict
from eggroll_llm.es import population_layout
from eggroll_llm.fitness import FitnessError
from eggroll_llm.recipe import run_recipe
from eggroll_llm.runlog import TIMING_KEYS
from eggroll_llm.trainer import prompt_indices


def train(config, resume=False):
    return run_recipe(config, resume=resume).run_dir


def small_config(out, **overrides):
    # length: longer is better, so members differ even when none answers right and every short run updates
    base = {"output_dir": str(out), "seed": 1, "rewards": ["gsm8k", "toy_rewards:length_reward"], "max_steps": 2,
            "eval_every": 2, "save_every": 1, "disable_tqdm": True,
            "data": {"eval_limit": 6}, "generation": {"max_new_tokens": 48},
            "es": {"population_size": 4, "members_per_prompt": 2, "prompts_per_member": 4, "sigma": 0.1,
                   "lr": 0.05, "adapter_rank": 2}}
    for key, value in overrides.items():
        node = base
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return load_config(None, base)


def untimed(path):
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
            for r in map(json.loads, path.read_text().splitlines())]


def test_prompt_indices_are_a_pure_function_of_step():
    first = [prompt_indices(10, step, 4, seed=0) for step in range(5)]
    assert first == [prompt_indices(10, step, 4, seed=0) for step in range(5)]
    epoch0 = sum(first[:2], []) + first[2][:2]            # positions 0..9 are one permutation of the data
    assert sorted(epoch0) == list(range(10))
    assert prompt_indices(10, 0, 4, seed=1) != first[0]


def test_population_layout_groups_antithetic_pairs():
    members, slots = population_layout(8, 4, 3)
    assert members.tolist() == [m for m in range(8) for _ in range(3)]
    for k in range(0, 8, 2):  # partners answer exactly the same prompt slots
        assert slots[members == k].tolist() == slots[members == k + 1].tolist()
    assert sorted(set(slots.tolist())) == list(range(6))  # 2 groups x 3 prompts


def test_run_directory_layout(tmp_path):
    run = train(small_config(tmp_path / "run"))
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert {"eval_accuracy", "eval_strict_accuracy", "eval_n"} <= set(records[0]) | set(records[2])
    for record in records[1:]:
        assert {"wall_s", "completions", "tokens", "reward_mean", "updates", "peak_mem_mb"} <= set(record)
    assert records[2]["completions"] == 2 * 4 * 4
    assert yaml.safe_load((run / "config.yaml").read_text())["es"]["population_size"] == 4
    assert [p.name for p in list_checkpoints(run)] == ["step-000001", "step-000002"]
    assert json.loads((run / "adapter" / "adapter_config.json").read_text())["r"] == 2
    state = load_file(str(list_checkpoints(run)[-1] / "state.safetensors"))
    assert any(k.endswith("lora_U") and v.abs().sum() > 0 for k, v in state.items()), "the update reached the adapter"


@pytest.mark.integration
def test_same_seed_same_metrics(tmp_path):
    a = train(small_config(tmp_path / "a"))
    b = train(small_config(tmp_path / "b"))
    assert untimed(a / "metrics.jsonl") == untimed(b / "metrics.jsonl")
    c = train(small_config(tmp_path / "c", seed=2))
    assert untimed(a / "metrics.jsonl") != untimed(c / "metrics.jsonl")


@pytest.mark.integration
def test_resume_continues_exactly(tmp_path):
    whole = train(small_config(tmp_path / "whole", max_steps=4, **{"es.momentum": 0.5}))
    split = tmp_path / "split"
    train(small_config(split, max_steps=2, **{"es.momentum": 0.5}))
    with pytest.raises(FileExistsError, match="--resume"):
        train(small_config(split, max_steps=4, **{"es.momentum": 0.5}))
    train(small_config(split, max_steps=4, **{"es.momentum": 0.5}), resume=True)
    ends = [load_file(str(list_checkpoints(run)[-1] / "state.safetensors")) for run in (whole, split)]
    assert ends[0].keys() == ends[1].keys()
    assert any(v.abs().sum() > 0 for k, v in ends[0].items() if k.endswith("lora_U"))
    for key in ends[0]:
        torch.testing.assert_close(ends[0][key], ends[1][key], rtol=0, atol=1e-6)
    assert untimed(whole / "metrics.jsonl") == untimed(split / "metrics.jsonl")


@pytest.mark.integration
def test_resume_refuses_a_changed_recipe(tmp_path):
    train(small_config(tmp_path / "r", max_steps=1))
    with pytest.raises(ValueError, match="es.sigma: 0.1 → 0.5"):
        train(small_config(tmp_path / "r", max_steps=2, **{"es.sigma": 0.5}), resume=True)


def test_nan_reward_is_an_error_and_writes_no_checkpoint(tmp_path):
    with pytest.raises(FitnessError, match="returned nan at index 0"):
        train(small_config(tmp_path / "nan", rewards=["toy_rewards:nan_reward"]))
    assert not list_checkpoints(tmp_path / "nan")


def test_wrong_length_reward_is_an_error(tmp_path):
    with pytest.raises(FitnessError, match="returned 1 scores for 6 completions"):  # the step-0 evaluation's 6
        train(small_config(tmp_path / "short", rewards=["toy_rewards:one_score_reward"]))


def test_target_pattern_matching_nothing(tmp_path):
    with pytest.raises(ValueError, match="matches no nn.Linear"):
        train(small_config(tmp_path / "t", **{"es.target_modules": ["nonexistent_proj"]}))


@pytest.mark.integration  # trainings against a wall-clock budget
def test_max_wall_s_stops_early_and_says_so_even_on_a_spent_resume(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump(to_dict(small_config(tmp_path / "w", max_steps=50, max_wall_s=1e-6))))
    assert main(["train", str(recipe), "--no-progress"]) == 0
    note = "stopped at step 1 of 50: the max_wall_s budget of 1e-06 s of training was spent"
    assert note in capsys.readouterr().out
    records = untimed(tmp_path / "w" / "metrics.jsonl")
    assert records[-1]["step"] == 1 and "eval_accuracy" in records[-1]
    assert main(["train", str(recipe), "--no-progress", "--resume"]) == 0  # nothing left to spend: ends at once
    assert note in capsys.readouterr().out and untimed(tmp_path / "w" / "metrics.jsonl") == records


@pytest.mark.integration
def test_es_raises_a_toy_reward(tmp_path):
    """Learning sanity on a reward ES can climb in a few steps (bigger final numbers): the mean reward of the last
    steps beats the first ones. A sign error in the fold or a member/row mix-up makes this fail."""
    config = small_config(tmp_path / "toy", rewards=["toy_rewards:bigger_answer_reward"], max_steps=16,
                          eval_every=100, save_every=100,
                          **{"es.population_size": 16, "es.members_per_prompt": 16, "es.prompts_per_member": 4,
                             "es.sigma": 0.02, "es.lr": 0.3, "es.adapter_rank": 4})
    run = train(config)
    reward = [r["reward_mean"] for r in untimed(run / "metrics.jsonl")[1:]]
    assert sum(reward[-4:]) / 4 > 2 * sum(reward[:4]) / 4 + 0.1
