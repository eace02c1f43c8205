"""What did fine-tuning change on tiny-countdown? Splits `eggroll-llm eval --task countdown --out` records by how far
the worked search went.

The embedded tiny-countdown model is trained on a mix of full worked searches and careless ones that stop after two
operations (scripts/train_tiny_countdown.py --careless-fraction), so on 4-number problems its greedy answers come in
two modes: the search stops short (one number left unused, off the target) or goes on. For each records file this
prints the success rate, the share of 4-number answers that stop short, and the success rate of each mode:

    eggroll-llm eval --model tiny-countdown --task countdown --split validation --limit 200 --out base.jsonl
    eggroll-llm eval --model tiny-countdown --task countdown --adapter runs/tiny-countdown-eggroll/adapter \\
        --split validation --limit 200 --out tuned.jsonl
    python evals/diagnostics/countdown_modes.py base.jsonl tuned.jsonl
"""

from __future__ import annotations

import re

from mode_records import accuracy, main

_NUMS = re.compile(r"numbers \[([0-9, ]+)\]")


def stopped_short(record: dict) -> bool:
    """A 4-number problem whose worked search closed after fewer than three operations."""
    found = _NUMS.search(str(record["prompt"]))
    count = len(found.group(1).split(",")) if found else 0
    search = record["completion"].split("</think>", 1)[0]
    return count == 4 and search.count("=") < 3


def modes(records: list[dict]) -> dict[str, float | int | None]:
    """Success overall, the share of 4-number answers that stop short, and the success of each mode on them."""
    four = [r for r in records if (m := _NUMS.search(str(r["prompt"]))) and len(m.group(1).split(",")) == 4]
    short = [r for r in four if stopped_short(r)]
    full = [r for r in four if not stopped_short(r)]
    return {"n": len(records), "accuracy": accuracy(records), "four_number_n": len(four),
            "stopped_short_share": round(len(short) / len(four), 4) if four else None,
            "stopped_short_accuracy": accuracy(short), "full_search_accuracy": accuracy(full)}


if __name__ == "__main__":
    main(__doc__, modes, "eggroll-llm eval --task countdown")
