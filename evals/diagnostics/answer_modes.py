"""What did fine-tuning change? Splits `eggroll-llm eval --out` records into worked and unworked answers.

The embedded model is trained on a mix of worked solutions and careless unworked answers ('#### N' straight away,
scripts/train_tiny_model.py --direct-fraction), so its greedy answers come in two modes. For each records file this
prints the accuracy, the share of answers that show their work, and the accuracy of each mode:

    eggroll-llm eval --model tiny-arith --split validation --limit 200 --out base.jsonl
    eggroll-llm eval --model tiny-arith --adapter runs/tiny-arith-eggroll/adapter --split validation --limit 200 \\
        --out tuned.jsonl
    python evals/diagnostics/answer_modes.py base.jsonl tuned.jsonl
"""

from __future__ import annotations

from mode_records import accuracy, main


def modes(records: list[dict]) -> dict[str, float]:
    """Accuracy overall and per mode; an answer is unworked when its completion starts with '####'."""
    unworked = [r for r in records if r["completion"].lstrip().startswith("####")]
    worked = [r for r in records if not r["completion"].lstrip().startswith("####")]
    return {"n": len(records), "accuracy": accuracy(records), "worked_share": round(len(worked) / len(records), 4),
            "worked_accuracy": accuracy(worked), "unworked_accuracy": accuracy(unworked)}


if __name__ == "__main__":
    main(__doc__, modes, "eggroll-llm eval")
