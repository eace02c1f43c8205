"""evaluate.py: greedy evaluation scored by answer checking and by the run's rewards, with a scripted engine (the
real engines are tested in test_engine_hf.py), so every figure here is worked out by hand."""

import json

import datasets
import pytest

from eggroll_llm.engine.base import Completion
from eggroll_llm.evaluate import answer_record, evaluate, greedy_completions, held_out_metrics
from eggroll_llm.inputs import PromptSet, RewardSet


class ScriptedEngine:
    """Answers each prompt with a fixed completion; records the batches it was asked for."""

    def __init__(self, answers: dict):
        self.answers, self.batches = answers, []

    def generate(self, prompts, sampling):
        self.batches.append(len(prompts))
        texts = [self.answers[p if isinstance(p, str) else tuple(p)] for p in prompts]
        return [Completion(text=t, token_ids=list(range(len(t))), num_tokens=len(t), finish_reason="eos")
                for t in texts]


class Tokenizer:
    """Each character is one token (enough for PromptSet), no chat template."""

    chat_template = None

    def __call__(self, texts, add_special_tokens=False, verbose=False):
        return {"input_ids": [[ord(c) for c in t] for t in texts]}


def test_answer_checking_is_strict_and_flexible():
    assert answer_record("so 12 apples\n#### 12", "#### 12") == {
        "extracted": "12", "extracted_strict": "12", "gold": "12", "correct": True, "strict_correct": True}
    record = answer_record("the answer is 12.0", "12")
    assert record["correct"] and not record["strict_correct"]


def test_evaluate_batches_and_scores_against_gold():
    engine = ScriptedEngine({"a": "#### 3", "b": "4", "c": "#### 9"})
    result = evaluate(engine, ["a", "b", "c"], ["#### 3", "#### 4", "#### 8"], max_new_tokens=8, batch_size=2,
                      progress=False)
    assert engine.batches == [2, 1]
    assert (result.accuracy, result.strict_accuracy, result.n, result.tokens) == (2 / 3, 1 / 3, 3, 6 + 1 + 6)
    with pytest.raises(ValueError, match="3 prompts but 2 gold answers"):
        evaluate(engine, ["a", "b", "c"], ["1", "2"], max_new_tokens=8)
    assert [c.text for c in greedy_completions(engine, ["c"], max_new_tokens=8)] == ["#### 9"]


@pytest.mark.parametrize("accuracy", [False, True])
def test_held_out_metrics_report_accuracy_only_when_asked(tmp_path, accuracy):
    rows = [{"prompt": "a", "answer": "#### 3"}, {"prompt": "b", "answer": "#### 5"}]
    eval_set = PromptSet(datasets.Dataset.from_list(rows), Tokenizer(), "eval_dataset")
    engine = ScriptedEngine({(97,): "#### 3", (98,): "#### 4"})
    rewards = RewardSet([lambda prompts, completions, **kw: [1.0, 0.0], "format"])
    metrics = held_out_metrics(engine, eval_set, rewards, max_new_tokens=8, accuracy=accuracy,
                               records_path=tmp_path / "eval.jsonl")
    assert metrics["eval_reward"] == pytest.approx((1 + 1 + 0 + 1) / 2) and metrics["eval_n"] == 2
    assert metrics["eval_reward/format_reward"] == 1.0
    assert ("eval_accuracy" in metrics) == accuracy
    if accuracy:
        assert (metrics["eval_accuracy"], metrics["eval_strict_accuracy"]) == (0.5, 0.5)
    records = [json.loads(line) for line in (tmp_path / "eval.jsonl").read_text().splitlines()]
    assert [r["index"] for r in records] == [0, 1] and records[1]["completion"] == "#### 4"
    assert ("correct" in records[0]) == accuracy
