"""Held-out evaluation: batched greedy generation, scored by the run's reward functions and, where the dataset has
GSM8K-style gold answers, by strict and flexible answer checking.

One code path serves `eggroll-llm eval`, the EGGROLL trainer's periodic evaluation and the GRPO baseline's
callback, so every figure in a comparison is measured the same way. A run keeps the per-problem records of every
evaluation in `eval/step-NNNNNN.jsonl` (what `compare` pairs problem by problem).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from .engine import SamplingParams
from .io import atomic_write_text
from .rewards import extract_answer, gold_answer, numbers_equal

DEFAULT_MAX_NEW_TOKENS = {"tiny-arith": 64, "gsm8k": 512, "countdown": 256}
TASK_REWARDS = {"countdown": ["countdown"], "tiny-arith": ["gsm8k"], "gsm8k": ["gsm8k"]}  # eval's default rewards


@dataclass
class EvalResult:
    accuracy: float          # flexible extraction (lm-eval-harness flexible-extract)
    strict_accuracy: float   # `#### N` only
    n: int
    tokens: int
    records: list[dict] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        return {"accuracy": self.accuracy, "strict_accuracy": self.strict_accuracy, "n": self.n, "tokens": self.tokens}


def greedy_completions(engine, prompts: list[str] | list[list[int]], *, max_new_tokens: int, batch_size: int = 64,
                       progress: bool = False, description: str = "eval") -> list:
    """The engine's greedy completion (engine.base.Completion) of every prompt, `batch_size` prompts at a time."""
    sampling = SamplingParams(max_new_tokens=max_new_tokens)
    out = []
    with tqdm(total=len(prompts), desc=description, unit="ex", disable=not progress, leave=False) as bar:
        for start in range(0, len(prompts), batch_size):
            out += engine.generate(prompts[start:start + batch_size], sampling)
            bar.update(len(out) - bar.n)
    return out


def answer_record(completion: str, answer: str | int) -> dict:
    """Strict (`#### N`) and flexible (last number) checks of one completion against its gold answer."""
    gold = gold_answer(answer)
    flexible, strict = extract_answer(completion, mode="flexible"), extract_answer(completion, mode="strict")
    return {"extracted": flexible, "extracted_strict": strict, "gold": gold, "correct": numbers_equal(flexible, gold),
            "strict_correct": numbers_equal(strict, gold)}


def evaluate(engine, prompts: list[str], answers: list[str], *, max_new_tokens: int, batch_size: int = 64,
             progress: bool = True, description: str = "eval", prompt_ids: list[list[int]] | None = None) -> EvalResult:
    """Greedy completions for `prompts`, scored against the gold `answers` (`#### N` strings or bare numbers).

    `prompt_ids`: the prompts already tokenised (and fitted to the context, inputs.PromptSet); the engine encodes
    `prompts` itself otherwise."""
    if not prompts:
        raise ValueError("evaluation needs at least one example")
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} gold answers")
    completions = greedy_completions(engine, prompts if prompt_ids is None else prompt_ids,
                                     max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress,
                                     description=description)
    records = [{"prompt": prompt, "completion": c.text, **answer_record(c.text, answer)}
               for prompt, answer, c in zip(prompts, answers, completions)]
    n = len(records)
    return EvalResult(accuracy=sum(r["correct"] for r in records) / n,
                      strict_accuracy=sum(r["strict_correct"] for r in records) / n,
                      n=n, tokens=sum(c.num_tokens for c in completions), records=records)


def reward_records(engine, eval_set, rewards, indices, *, max_new_tokens: int, batch_size: int = 64,
                   progress: bool = False, accuracy: bool = True) -> tuple[list[dict], list]:
    """(per-problem records, completions) of the greedy completions of `eval_set`'s rows at `indices`, scored by
    `rewards` (an inputs.RewardSet): index, weighted reward, completion, each function's score where there are
    several, and (with `accuracy`) GSM8K-style answer checks (gold, correct, strict_correct) where the dataset has an
    `answer` column."""
    prompts, prompt_ids, columns = eval_set.select(indices)
    completions = greedy_completions(engine, prompt_ids, max_new_tokens=max_new_tokens, batch_size=batch_size,
                                     progress=progress)
    text = [c.text for c in completions]
    total, parts = rewards(prompts, eval_set.completions(text), [c.token_ids for c in completions], columns)
    records = []
    for k, index in enumerate(indices):
        record = {"index": index, "reward": float(total[k]), "completion": text[k]}
        if len(parts) > 1:
            record["rewards"] = {label: float(scores[k]) for label, scores in parts.items()}
        if accuracy and "answer" in columns:
            checked = answer_record(text[k], columns["answer"][k])
            record.update({k: checked[k] for k in ("gold", "correct", "strict_correct")})
        records.append(record)
    return records, completions


def reward_metrics(records: list[dict]) -> dict:
    """eval_reward (and eval_reward/NAME per function, eval_accuracy / eval_strict_accuracy with gold answers): the
    means over `records` of `reward_records`."""
    n = len(records)
    if not n:
        raise ValueError("evaluation needs at least one example")
    metrics = {"eval_reward": sum(r["reward"] for r in records) / n}
    for label in records[0].get("rewards", {}):
        metrics[f"eval_reward/{label}"] = sum(r["rewards"][label] for r in records) / n
    if "correct" in records[0]:
        metrics.update(eval_accuracy=sum(r["correct"] for r in records) / n,
                       eval_strict_accuracy=sum(r["strict_correct"] for r in records) / n)
    return metrics


def held_out_metrics(engine, eval_set, rewards, *, max_new_tokens: int, accuracy: bool = False, processes=None,
                     records_path: Path | None = None) -> dict:
    """The eval_* keys of a metrics.jsonl record, the same for EGGROLL and GRPO runs.

    `eval_set` is an inputs.PromptSet, `rewards` an inputs.RewardSet: `eval_reward` is the mean weighted reward of
    the greedy completions (per function too, `eval_reward/NAME`, when there are several); with `accuracy` (the run
    asks for it: an answer-checking reward or a GSM8K-style task) the `answer` column adds eval_accuracy /
    eval_strict_accuracy (GSM8K-style checking). With `processes` (distributed.Processes
    of a multi-process run) each process evaluates its share of the prompts and the records are gathered: the
    figures of one process evaluating them all. `records_path`: the per-problem records, written by the main process.
    """
    start = time.perf_counter()
    part = range(len(eval_set))[processes.share(len(eval_set))] if processes is not None else range(len(eval_set))
    records = reward_records(engine, eval_set, rewards, part, max_new_tokens=max_new_tokens,
                             accuracy=accuracy)[0] if len(part) else []
    if processes is not None:
        records = processes.gather_objects(records, "the held-out records")
    metrics = reward_metrics(records)
    if records_path is not None and (processes is None or processes.is_main):
        atomic_write_text(records_path, "".join(json.dumps(r) + "\n" for r in records))
    return {**metrics, "eval_n": len(records), "eval_s": round(time.perf_counter() - start, 3)}


def evaluate_rewards(engine, eval_set, task: str | None, reward_names: list[str] | None, *, max_new_tokens: int,
                     batch_size: int = 64, progress: bool = True) -> tuple[list[dict], dict]:
    """(per-problem records, summary) of `eggroll-llm eval` scored by reward functions, as training evaluates.

    `eval_set` is an inputs.PromptSet; `reward_names` are built-in names or module:function paths (default: the
    task's own, TASK_REWARDS). The summary has n, tokens, eval_reward (and eval_reward/NAME with several rewards),
    and `accuracy` where the task defines success: countdown's success rate (strict_accuracy the same: the grader
    has one rule), or the flexible / strict answer checks of a dataset with an `answer` column."""
    from .countdown import is_correct
    from .inputs import RewardSet

    names = reward_names or TASK_REWARDS[task]
    records, completions = reward_records(engine, eval_set, RewardSet(names), range(len(eval_set)),
                                          max_new_tokens=max_new_tokens, batch_size=batch_size, progress=progress)
    metrics = reward_metrics(records)
    for k, record in enumerate(records):
        records[k] = record = {"index": record["index"], "prompt": eval_set.prompts[record["index"]], **record}
        if task == "countdown":
            columns = eval_set.columns
            record["correct"] = is_correct(record["completion"], columns["nums"][record["index"]],
                                           columns["target"][record["index"]])
    n = len(records)
    summary = {"n": n, "tokens": sum(c.num_tokens for c in completions)}
    if task == "countdown":
        summary["accuracy"] = summary["strict_accuracy"] = sum(r["correct"] for r in records) / n
    elif "eval_accuracy" in metrics:
        summary.update(accuracy=metrics.pop("eval_accuracy"), strict_accuracy=metrics.pop("eval_strict_accuracy"))
    return records, {**summary, **metrics}
