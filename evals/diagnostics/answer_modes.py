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

import argparse
import json
from pathlib import Path


def modes(records: list[dict]) -> dict[str, float]:
    """Accuracy overall and per mode; an answer is unworked when its completion starts with '####'."""
    unworked = [r for r in records if r["completion"].lstrip().startswith("####")]
    worked = [r for r in records if not r["completion"].lstrip().startswith("####")]

    def accuracy(rows: list[dict]) -> float | None:
        return round(sum(r["correct"] for r in rows) / len(rows), 4) if rows else None

    return {"n": len(records), "accuracy": accuracy(records), "worked_share": round(len(worked) / len(records), 4),
            "worked_accuracy": accuracy(worked), "unworked_accuracy": accuracy(unworked)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="+", type=Path, help="records files written by `eggroll-llm eval --out`")
    args = parser.parse_args()
    for path in args.records:
        lines = path.read_text().splitlines()
        if not lines:
            raise SystemExit(f"{path} holds no records; write one with `eggroll-llm eval --out {path}`")
        print(json.dumps({"records": str(path), **modes([json.loads(line) for line in lines])}))


if __name__ == "__main__":
    main()
