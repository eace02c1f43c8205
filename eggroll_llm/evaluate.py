"""Held-out evaluation: batched greedy generation, strict and flexible GSM8K-style answer checking.

One code path serves `eggroll-llm eval`, the trainer's periodic evaluation and the GRPO baseline's callback, so
every accuracy in a comparison is measured the same way.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from .engine import SamplingParams
from .rewards import extract_answer, gold_answer, numbers_equal

DEFAULT_MAX_NEW_TOKENS = {"tiny-arith": 64, "gsm8k": 512}


@dataclass
class EvalResult:
    accuracy: float          # flexible extraction (lm-eval-harness flexible-extract)
    strict_accuracy: float   # `#### N` only
    n: int
    tokens: int
    records: list[dict] = field(default_factory=list, repr=False)

    def summary(self) -> dict:
        return {"accuracy": self.accuracy, "strict_accuracy": self.strict_accuracy, "n": self.n, "tokens": self.tokens}


def evaluate(engine, prompts: list[str], answers: list[str], *, max_new_tokens: int, batch_size: int = 64,
             progress: bool = True, description: str = "eval") -> EvalResult:
    """Greedy completions for `prompts`, scored against the gold `answers` (`#### N` strings or bare numbers)."""
    if not prompts:
        raise ValueError("evaluation needs at least one example")
    if len(prompts) != len(answers):
        raise ValueError(f"{len(prompts)} prompts but {len(answers)} gold answers")
    sampling = SamplingParams(max_new_tokens=max_new_tokens)
    records, tokens = [], 0
    with tqdm(total=len(prompts), desc=description, unit="ex", disable=not progress, leave=False) as bar:
        for start in range(0, len(prompts), batch_size):
            chunk = slice(start, start + batch_size)
            for prompt, answer, completion in zip(prompts[chunk], answers[chunk],
                                                  engine.generate(prompts[chunk], sampling)):
                gold = gold_answer(answer)
                flexible = extract_answer(completion.text, mode="flexible")
                strict = extract_answer(completion.text, mode="strict")
                tokens += completion.num_tokens
                records.append({"prompt": prompt, "completion": completion.text, "extracted": flexible,
                                "extracted_strict": strict, "gold": gold, "correct": numbers_equal(flexible, gold),
                                "strict_correct": numbers_equal(strict, gold)})
            bar.update(len(prompts[chunk]))
    n = len(records)
    return EvalResult(accuracy=sum(r["correct"] for r in records) / n,
                      strict_accuracy=sum(r["strict_correct"] for r in records) / n,
                      n=n, tokens=tokens, records=records)


def held_out_metrics(engine, prompts: list[str], answers: list[str], *, max_new_tokens: int,
                     processes=None) -> dict:
    """The eval_* keys of a metrics.jsonl record (DESIGN.md §7), the same for EGGROLL and GRPO runs.

    With `processes` (distributed.Processes of a multi-process run) each process evaluates its share of the prompts
    and the correct counts are summed over processes: the figures of one process evaluating them all.
    """
    start = time.perf_counter()
    part = processes.share(len(prompts)) if processes is not None else slice(None)
    records = (evaluate(engine, prompts[part], answers[part], max_new_tokens=max_new_tokens, progress=False).records
               if prompts[part] else [])
    counts = [sum(r["correct"] for r in records), sum(r["strict_correct"] for r in records), len(records)]
    if processes is not None:
        counts = processes.sum_counts(counts, "the held-out counts")
    correct, strict, n = counts
    if not n:
        raise ValueError("evaluation needs at least one example")
    return {"eval_accuracy": correct / n, "eval_strict_accuracy": strict / n, "eval_n": n,
            "eval_s": round(time.perf_counter() - start, 3)}
