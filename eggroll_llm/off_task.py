"""Off-task text for `eggroll-llm drift`: what a fine-tuned model should still do as its base did.

An embedded model registers a generator of held-out text from its own pretraining distribution (OFF_TASK_SETS, by
model name); any other model takes a file (`--off-task FILE`): jsonl rows with a `prompt` or `text` field (and an
optional `completion`), or a txt file, one text per non-empty line. Each row is a prompt (which the base model
continues greedily, for the KL) and a target (the tokens whose language-model loss is measured): the completion
where there is one, else the text itself.

    eggroll-llm drift runs/a runs/b --out drift/ --off-task my_text.jsonl
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

DEFAULT_ROWS = 200


@dataclass
class OffTaskSet:
    """`rows`: {"prompt": text, "completion": text or None}; `source`: where they came from (drift.json)."""

    source: str
    rows: list[dict]


def tiny_arith_off_task(tokenizer, n: int) -> list[dict]:
    """Held-out problems of the embedded tiny-arith model's pretraining distribution, prompted and answered as it
    was trained (tiny_arith.pretraining_held_out): worked or careless answers, never the task's eval problems."""
    from .data import format_prompt
    from .tiny_arith import pretraining_held_out

    return [{"prompt": format_prompt(tokenizer, row["question"]), "completion": row["answer"]}
            for row in pretraining_held_out(n)]


def tiny_countdown_off_task(tokenizer, n: int) -> list[dict]:
    """Held-out Countdown problems of the embedded tiny-countdown model's pretraining distribution, prompted and
    answered as it was trained (tiny_countdown.pretraining_held_out): careful or careless worked searches."""
    from .countdown import countdown_prompt
    from .data import render_prompt
    from .tiny_countdown import pretraining_held_out

    return [{"prompt": render_prompt(tokenizer, [{"role": "user", "content": countdown_prompt(row["nums"],
                                                                                              row["target"])}]),
             "completion": row["answer"]} for row in pretraining_held_out(n)]


# embedded model name -> (description, generator(tokenizer, n) -> rows); another embedded model adds its own here
OFF_TASK_SETS: dict[str, tuple[str, Callable[[object, int], list[dict]]]] = {
    "tiny-arith": ("tiny-arith pretraining distribution, held out (tiny_arith.pretraining_held_out)",
                   tiny_arith_off_task),
    "tiny-countdown": ("tiny-countdown pretraining distribution, held out (tiny_countdown.pretraining_held_out)",
                       tiny_countdown_off_task),
}


def read_off_task_file(path: str | Path) -> OffTaskSet:
    """Rows of a jsonl (`prompt` or `text`, optional `completion`) or txt (one text a line) file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"off-task file {path} does not exist; pass a jsonl file with a text or prompt field, "
                                "or a txt file with one text per line")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    rows = []
    if path.suffix == ".jsonl":
        for number, line in enumerate(lines, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number} is not JSON ({err.msg}); one JSON object a line") from None
            text = row.get("prompt", row.get("text")) if isinstance(row, dict) else None
            if not isinstance(text, str) or not text:
                raise ValueError(f"{path}:{number} has no non-empty text or prompt field")
            completion = row.get("completion")
            rows.append({"prompt": text, "completion": completion if isinstance(completion, str) else None})
    else:
        rows = [{"prompt": line, "completion": None} for line in lines]
    if not rows:
        raise ValueError(f"off-task file {path} holds no text; give at least one row")
    return OffTaskSet(str(path), rows)


def off_task_set(model_name: str, tokenizer, path: str | Path | None = None, n: int = DEFAULT_ROWS) -> OffTaskSet:
    """The file's rows when given, else the registered set of an embedded model; other models need a file."""
    if path is not None:
        return read_off_task_file(path)
    if model_name not in OFF_TASK_SETS:
        raise ValueError(f"{model_name} has no built-in off-task set (only {', '.join(OFF_TASK_SETS)}); pass "
                         "--off-task FILE (jsonl with a text or prompt field, or txt)")
    description, generate = OFF_TASK_SETS[model_name]
    return OffTaskSet(description, generate(tokenizer, n))
