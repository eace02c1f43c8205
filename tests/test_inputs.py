"""inputs.py: what both trainers take, resolved and checked: reward functions (scored, weighted, named for
config.yaml), prompts (rendered, tokenised, fitted to the context), and the run config an API run records."""

import datasets
import pytest
import torch

from eggroll_llm.config import ConfigError, EggrollConfig
from eggroll_llm.data import DataError
from eggroll_llm.inputs import PromptSet, RewardSet, describe_dataset, fit_prompts, prompt_budget, run_config
from eggroll_llm.models import load_tokenizer
from eggroll_llm.rewards import RewardError, gsm8k_reward


def longer(prompts, completions, **kw):
    return [float(len(c)) for c in completions]


def test_rewards_are_weighted_summed_and_labelled_apart():
    rewards = RewardSet([longer, longer, "format"], weights=[1.0, 0.5, 2.0])
    total, parts = rewards(["p", "q"], ["ab", "#### 3"], [[1], [2]], {})
    assert rewards.labels == ["longer", "longer#2", "format_reward"]
    assert torch.allclose(total, torch.tensor([2 + 1 + 0.0, 6 + 3 + 2.0]))
    assert torch.equal(parts["format_reward"], torch.tensor([0.0, 1.0]))
    assert not rewards.wants_accuracy and RewardSet(["gsm8k"]).wants_accuracy
    assert RewardSet([gsm8k_reward]).wants_accuracy  # the built-in as an object asks for accuracy too


@pytest.mark.parametrize("returned, message", [
    (0.5, "returned float 0.5, not a list"),
    (None, "returned NoneType None, not a list"),
    ([1.0], "returned 1 scores for 2 completions"),
])
def test_a_reward_that_returns_no_score_per_completion_is_one_clear_error(returned, message):
    rewards = RewardSet([lambda prompts, completions, **kw: returned])
    with pytest.raises(ValueError, match=message):
        rewards(["p", "q"], ["a", "b"], [[1], [2]], {})


def test_a_reward_of_only_none_warns_that_it_gives_no_signal():
    rewards = RewardSet([lambda prompts, completions, **kw: [None] * len(completions)])
    with pytest.warns(UserWarning, match="returned None for every completion"):
        total, _ = rewards(["p"], ["a"], [[1]], {})
    assert total.tolist() == [0.0]


def test_rewards_are_recorded_by_a_name_that_imports_or_marked_as_not_importable():
    assert RewardSet(["gsm8k", "toy_rewards:length_reward", gsm8k_reward, longer]).names == [
        "gsm8k", "toy_rewards:length_reward", "eggroll_llm.rewards:gsm8k_reward", "test_inputs:longer"]
    (name,) = RewardSet([lambda p, c, **k: []]).names
    assert name.startswith("test_inputs:test_rewards_are_recorded") and name.endswith("<lambda> (not importable)")
    with pytest.raises(RewardError, match="reward_weights has 1 entries for 2"):
        RewardSet([longer, longer], weights=[1.0])


def test_prompts_are_rendered_tokenised_and_selected_with_their_columns():
    tokenizer = load_tokenizer("tiny-arith")
    chat = datasets.Dataset.from_list([{"prompt": [{"role": "user", "content": f"q{i}"}], "k": i} for i in range(3)])
    prompts = PromptSet(chat, tokenizer, "train_dataset")
    texts, ids, columns = prompts.select([2, 0, 2])
    assert columns == {"k": [2, 0, 2]} and ids[0] == ids[2] and texts[1][0]["content"] == "q0"
    assert prompts.completions(["x"]) == [[{"role": "assistant", "content": "x"}]]  # TRL's conversational form
    rendered = tokenizer.apply_chat_template(chat[0]["prompt"], tokenize=False, add_generation_prompt=True)
    assert ids[1] == tokenizer(rendered, add_special_tokens=False)["input_ids"]


def test_long_prompts_are_refused_by_row_or_keep_their_last_tokens():
    ids = [[1, 2], [1, 2, 3, 4, 5], [9]]
    with pytest.raises(DataError, match="row 2: the prompt has 5 tokens, over the 3"):
        fit_prompts(ids, 3, "error", "train_dataset")
    with pytest.warns(UserWarning, match="keeping their last 3 tokens"):
        assert fit_prompts(ids, 3, "truncate", "train_dataset") == [[1, 2], [3, 4, 5], [9]]

    class Model:
        config = type("C", (), {"max_position_embeddings": 64})()

    assert prompt_budget(Model(), 48) == 16
    with pytest.raises(ConfigError, match="leaves no room for a prompt"):
        prompt_budget(Model(), 64)


def test_an_api_run_config_describes_its_datasets_and_refuses_recipe_data_keys():
    train = datasets.Dataset.from_list([{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": "2"}])
    rewards = RewardSet([longer])
    args = run_config(EggrollConfig(), "tiny-arith", rewards, train, None, data_source=None)
    assert args.data.task is None and args.data.eval_dataset is None
    assert args.data.train_dataset == describe_dataset(train) == {"fingerprint": train._fingerprint, "num_rows": 2,
                                                                  "columns": ["prompt", "answer"]}
    assert args.rewards == ["test_inputs:longer"]
    assert run_config(args, "tiny-arith", rewards, train, None, data_source=None) == args  # a resume passes it back
    with pytest.raises(ConfigError, match="data.few_shot is 2, but the datasets came as objects"):
        run_config(EggrollConfig(data={"few_shot": 2}), "tiny-arith", rewards, train, None, data_source=None)
    with pytest.raises(ConfigError, match=r"args.rewards is \['format'\], but the Python API scores with "
                                          "reward_funcs \\(test_inputs:longer\\)"):
        run_config(EggrollConfig(rewards=["format"]), "tiny-arith", rewards, train, None, data_source=None)
    recipe = EggrollConfig(data={"task": "gsm8k", "eval_limit": 8})
    assert run_config(recipe, "tiny-arith", rewards, train, None, data_source=recipe.data).data == recipe.data
