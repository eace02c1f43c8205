"""The Python API (`EggrollTrainer`, shaped like TRL's GRPOTrainer): objects in, a run directory out.

Rewards get every dataset column, models and datasets can be objects, prompts can be chat messages, and the Python
route gives the metrics of the CLI route for the same config and seed.
"""

import dataclasses
import json

import datasets
import pytest
import torch
import yaml

from eggroll_llm import EggrollConfig, EggrollTrainer
from eggroll_llm.checkpoint import list_checkpoints
from eggroll_llm.cli import main
from eggroll_llm.config import ConfigError
from eggroll_llm.data import INSTRUCTION, DataError, load_task, task_dataset
from eggroll_llm.models import load_model, load_tokenizer
from eggroll_llm.rewards import RewardError, gsm8k_reward
from eggroll_llm.runlog import TIMING_KEYS

ES = {"population_size": 4, "members_per_prompt": 2, "prompts_per_member": 2, "sigma": 0.1, "lr": 0.05,
      "adapter_rank": 2}


def args(out, **top) -> EggrollConfig:
    return EggrollConfig(**{"output_dir": str(out), "seed": 1, "max_steps": 2, "eval_every": 2, "save_every": 2,
                            "disable_tqdm": True, "generation": {"max_new_tokens": 24}, "es": ES, **top})


def untimed(run) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-arith")


def qa_rows(n: int, split: str = "train") -> list[dict]:
    return load_task("tiny-arith", split, limit=n).to_list()


def test_a_custom_reward_gets_every_extra_column_aligned_with_its_prompt(tmp_path, tokenizer):
    rows = [{"prompt": f"{INSTRUCTION}\n{r['question']}", "answer": r["answer"], "row_id": i, "tag": f"t{i}"}
            for i, r in enumerate(qa_rows(12))]
    by_prompt = {r["prompt"]: r for r in rows}
    calls = []

    def checking_reward(prompts, completions, answer, row_id, tag, **kwargs):
        assert len(prompts) == len(completions) == len(answer) == len(row_id) == len(tag)
        for prompt, gold, i, t in zip(prompts, answer, row_id, tag):
            assert by_prompt[prompt]["row_id"] == i and by_prompt[prompt]["answer"] == gold and t == f"t{i}"
        calls.append(len(completions))
        return [len(c) / 100 for c in completions]

    dataset = datasets.Dataset.from_list(rows)
    run = EggrollTrainer(model="tiny-arith", reward_funcs=[checking_reward], train_dataset=dataset,
                         eval_dataset=dataset.select(range(3)), args=args(tmp_path / "run"),
                         processing_class=tokenizer).train().run_dir
    assert calls == [3, 8, 8, 3]  # eval at step 0, two steps of 4 members x 2 prompts, eval at the end
    records = untimed(run)
    assert [r["step"] for r in records] == [0, 1, 2]
    # an answer column alone does not turn on GSM8K accuracy: no accuracy reward asked for it
    assert "eval_reward" in records[-1] and "eval_accuracy" not in records[-1]
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["rewards"] == ["test_trainer_api:test_a_custom_reward_gets_every_extra_column_aligned_with_its_prompt"
                                ".<locals>.checking_reward (not importable)"]
    lines = (run / "eval" / "step-000002.jsonl").read_text().splitlines()
    assert [json.loads(line)["index"] for line in lines] == [0, 1, 2]


@pytest.mark.integration
def test_a_model_object_and_a_conversational_dataset_train(tmp_path, tokenizer):
    """Chat-message prompts go through the chat template for the engine; rewards see TRL's conversational form."""
    model = load_model("tiny-arith")
    rows = [{"prompt": [{"role": "user", "content": f"{INSTRUCTION}\n{r['question']}"}], "answer": r["answer"]}
            for r in qa_rows(8)]
    seen = []

    def reward(prompts, completions, answer, **kwargs):
        seen.append((prompts[0], completions[0]))
        return [len(c[0]["content"]) / 100 for c in completions]

    dataset = datasets.Dataset.from_list(rows)
    trainer = EggrollTrainer(model=model, reward_funcs=[reward, "gsm8k"], train_dataset=dataset,
                             args=args(tmp_path / "chat"), processing_class=tokenizer)
    assert trainer.args.model.name.endswith("tiny-arith")  # the object's name_or_path is what an export names
    run = trainer.train().run_dir
    prompt, completion = seen[0]
    assert isinstance(prompt, list) and completion[0]["role"] == "assistant"
    state = list_checkpoints(run)[-1] / "state.safetensors"
    from safetensors.torch import load_file

    assert any(k.endswith("lora_U") and v.abs().sum() > 0 for k, v in load_file(str(state)).items())
    assert [r["step"] for r in untimed(run)] == [0, 1, 2] and "eval_reward" not in untimed(run)[0]  # no eval set
    assert any(m is model for m in [trainer.model])  # the caller's model was trained in place


@pytest.mark.integration
def test_python_and_cli_routes_give_identical_metrics(tmp_path, tokenizer):
    recipe = {"output_dir": str(tmp_path / "cli"), "seed": 3, "max_steps": 2, "eval_every": 1, "save_every": 2,
              "rewards": ["gsm8k", "toy_rewards:length_reward"], "data": {"eval_limit": 4},
              "generation": {"max_new_tokens": 24}, "es": ES}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["train", str(path), "--no-progress"]) == 0

    from toy_rewards import length_reward

    train = task_dataset("tiny-arith", "train", tokenizer, rows_seed=3)
    held_out = task_dataset("tiny-arith", "validation", tokenizer, limit=4)
    # the datasets and rewards come as objects: no data.* and no rewards in args
    python_args = {k: v for k, v in recipe.items() if k not in ("data", "rewards")}
    config = EggrollConfig(**{**python_args, "output_dir": str(tmp_path / "py")}, disable_tqdm=True)
    run = EggrollTrainer(model="tiny-arith", reward_funcs=[gsm8k_reward, length_reward], train_dataset=train,
                         eval_dataset=held_out, args=config).train().run_dir
    assert untimed(run) == untimed(tmp_path / "cli")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["rewards"] == ["eggroll_llm.rewards:gsm8k_reward", "toy_rewards:length_reward"]  # both importable


@pytest.mark.integration
def test_reward_weights_scale_the_reward_but_not_the_update(tmp_path, tokenizer):
    """Group-centred fitness divides by the scores' spread, so doubling every weight doubles reward_mean only."""
    train = task_dataset("tiny-arith", "train", tokenizer, limit=64)
    runs = [EggrollTrainer(model="tiny-arith", reward_funcs=["toy_rewards:length_reward"], train_dataset=train,
                           args=args(tmp_path / f"w{w}", reward_weights=[w])).train().run_dir for w in (1.0, 2.0)]
    one, two = untimed(runs[0]), untimed(runs[1])
    for a, b in zip(one[1:], two[1:]):
        assert b["reward_mean"] == pytest.approx(2 * a["reward_mean"])
        assert b["update_norm"] == pytest.approx(a["update_norm"], rel=1e-5)


def test_a_task_without_answers_reports_eval_reward_only(tmp_path, tokenizer):
    rows = [{"prompt": f"Count to {k}:", "k": k} for k in range(1, 21)]

    def count_reward(prompts, completions, k, **kwargs):
        return [float(str(n) in c) for c, n in zip(completions, k)]

    dataset = datasets.Dataset.from_list(rows)
    run = EggrollTrainer(model="tiny-arith", reward_funcs=count_reward, train_dataset=dataset,
                         eval_dataset=dataset.select(range(5)),
                         args=args(tmp_path / "count", max_steps=1)).train().run_dir
    last = untimed(run)[-1]
    assert "eval_reward" in last and "eval_accuracy" not in last and last["eval_n"] == 5


@pytest.mark.parametrize("make, error, needle", [
    (lambda: datasets.Dataset.from_list([{"question": "q"}]), DataError, "has no prompt column"),
    (lambda: datasets.Dataset.from_list([{"prompt": ""}]), DataError, "row 1: the prompt must be non-empty"),
    (lambda: [{"prompt": "q"}], DataError, "must be a datasets.Dataset"),
])
def test_bad_datasets_are_refused_before_anything_is_written(tmp_path, make, error, needle):
    with pytest.raises(error, match=needle):
        EggrollTrainer(model="tiny-arith", reward_funcs="gsm8k", train_dataset=make(), args=args(tmp_path / "r"))
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("reward, needle", [
    ("no_such_module:fn", "cannot import no_such_module"),
    ("toy_rewards:missing", "has no attribute 'missing'"),
    ("toy_rewards:os", "is a module, not a function"),
    ("gsm9k", "did you mean 'gsm8k'"),
    (42, "must be a callable"),
])
def test_bad_rewards_are_refused(tmp_path, reward, needle):
    dataset = datasets.Dataset.from_list([{"prompt": "q"}])
    with pytest.raises(RewardError, match=needle):
        EggrollTrainer(model="tiny-arith", reward_funcs=[reward], train_dataset=dataset, args=args(tmp_path / "r"))


@pytest.mark.integration
def test_report_to_tensorboard_writes_event_files(tmp_path, tokenizer):
    pytest.importorskip("tensorboard")
    train = task_dataset("tiny-arith", "train", tokenizer, limit=16)
    run = EggrollTrainer(model="tiny-arith", reward_funcs="toy_rewards:length_reward", train_dataset=train,
                         args=args(tmp_path / "tb", max_steps=1, report_to="tensorboard")).train().run_dir
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    assert "reward_mean" in events.Tags()["scalars"]
    assert [e.step for e in events.Scalars("reward_mean")] == [1]
    assert torch.isfinite(torch.tensor(events.Scalars("reward_mean")[0].value))


# --- what an API run records, returns and refuses ------------------------------------------------------------------

def my_reward(prompts, completions, **kwargs):
    return [len(c) / 100 for c in completions]


@pytest.fixture(scope="module")
def api_run(tmp_path_factory):
    """A run from Python objects: a dataset with an answer column, a reward defined in a test module."""
    rows = [{"prompt": f"{INSTRUCTION}\n{r['question']}", "answer": r["answer"]} for r in qa_rows(16)]
    dataset = datasets.Dataset.from_list(rows)
    trainer = EggrollTrainer(model="tiny-arith", reward_funcs=[my_reward, lambda prompts, completions, **kw: [0.0] *
                                                               len(completions)], train_dataset=dataset,
                             eval_dataset=dataset.select(range(6)),
                             args=args(tmp_path_factory.mktemp("api") / "run"))
    return trainer, trainer.train(), dataset


def test_an_api_run_records_the_objects_it_trained_on(api_run):
    trainer, output, dataset = api_run
    saved = yaml.safe_load((output.run_dir / "config.yaml").read_text())
    assert saved["data"]["task"] is None and saved["data"]["data_path"] is None
    assert saved["data"]["train_dataset"] == {"fingerprint": dataset._fingerprint, "num_rows": 16,
                                              "columns": ["prompt", "answer"]}
    assert saved["data"]["eval_dataset"]["num_rows"] == 6
    assert saved["rewards"] == ["test_trainer_api:my_reward", "test_trainer_api:api_run.<locals>.<lambda> "
                                                               "(not importable)"]


def test_train_returns_a_train_output_and_keeps_the_log_history(api_run):
    trainer, output, _ = api_run
    records = [json.loads(line) for line in (output.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert trainer.state.log_history == records and [r["step"] for r in records] == [0, 1, 2]
    assert (output.global_step, output.stopped_by, output.training_loss) == (2, "max_steps", None)
    assert output.metrics == records[-1] and trainer.state.global_step == 2
    assert "eval_accuracy" not in records[-1]  # the answer column is there, but no accuracy reward asked


def test_an_api_run_resumes_from_python_but_not_from_a_recipe(api_run, tmp_path, capsys):
    trainer, output, dataset = api_run
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"rewards": ["toy_rewards:length_reward"]}))
    code = main(["train", str(recipe), "--output_dir", str(output.run_dir), "--resume", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "trained on a dataset given as a Python object (16 rows" in err and "resume_from_checkpoint=True" in err
    again = EggrollTrainer(model="tiny-arith", reward_funcs=trainer.rewards.funcs, train_dataset=dataset,
                           eval_dataset=dataset.select(range(6)), args=dataclasses.replace(trainer.args, max_steps=3))
    assert again.train(resume_from_checkpoint=True).global_step == 3
    assert [r["step"] for r in again.state.log_history] == [0, 1, 2, 3]


def test_recipe_only_data_settings_are_refused_with_objects(tmp_path):
    dataset = datasets.Dataset.from_list([{"prompt": "q"}])
    with pytest.raises(ConfigError, match="data.eval_limit is 8, but the datasets came as objects"):
        EggrollTrainer(model="tiny-arith", reward_funcs=my_reward, train_dataset=dataset,
                       args=args(tmp_path / "r", data={"eval_limit": 8}))
    assert not (tmp_path / "r").exists()


def test_a_reward_that_returns_only_none_warns(tmp_path):
    dataset = datasets.Dataset.from_list([{"prompt": f"q{i}"} for i in range(4)])
    trainer = EggrollTrainer(model="tiny-arith", reward_funcs="toy_rewards:all_none_reward", train_dataset=dataset,
                             args=args(tmp_path / "none", max_steps=1))
    with pytest.warns(UserWarning, match="'all_none_reward' returned None for every completion"):
        output = trainer.train()
    assert output.metrics["update_norm"] == 0.0
