"""What every reward function reads: a completion as plain text, and the error a bad reward input raises.

A module of its own so that the task modules (countdown.py) and the GSM8K rewards (rewards.py) share it without
importing each other.
"""

from __future__ import annotations

from typing import Any


class RewardError(ValueError):
    """Bad input to answer checking or a reward function: unknown mode or name, mismatched lists, unusable gold."""


def completion_text(completion: str | list[dict[str, Any]]) -> str:
    """A completion as plain text: a string as is, or TRL's conversational form (a list of message dicts) -> the
    content of the last assistant message (of the last message when none says role=assistant)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list) and completion and all(isinstance(m, dict) for m in completion):
        assistant = [m for m in completion if m.get("role") == "assistant"] or completion
        content = assistant[-1].get("content") or ""
        if isinstance(content, list):  # multimodal chat format: [{"type": "text", "text": ...}, ...]
            content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
        if isinstance(content, str):
            return content
    raise RewardError(f"cannot read a completion of type {type(completion).__name__}: {completion!r:.200}; "
                      "pass a string or a non-empty list of {'role': ..., 'content': ...} messages")
