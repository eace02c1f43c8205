"""What answer_modes.py and countdown_modes.py share: reading `eggroll-llm eval --out` records files and printing one
JSON line of a task's answer modes per file."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path


def accuracy(rows: list[dict]) -> float | None:
    """The share of `rows` scored correct, to 4 places; None for no rows."""
    return round(sum(r["correct"] for r in rows) / len(rows), 4) if rows else None


def main(doc: str, modes: Callable[[list[dict]], dict], eval_command: str) -> None:
    """The command line of a modes script: each records file's `modes`, one JSON line per file."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("records", nargs="+", type=Path, help="records files written by `eggroll-llm eval --out`")
    args = parser.parse_args()
    for path in args.records:
        lines = path.read_text().splitlines()
        if not lines:
            raise SystemExit(f"{path} holds no records; write one with `{eval_command} --out {path}`")
        print(json.dumps({"records": str(path), **modes([json.loads(line) for line in lines])}))
