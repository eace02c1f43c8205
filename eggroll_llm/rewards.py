"""GSM8K-style answer checking and TRL-compatible reward functions (docs/design.md §4).

Every function here has TRL's reward signature `fn(prompts, completions, **dataset_columns) -> list[float | None]`,
so the same callable scores EGGROLL's population and TRL's GRPOTrainer, and both methods are judged alike.
TRL's stock `accuracy_reward` is not used: it parses LaTeX and scores a plain `#### 72` as 0.

Extraction follows lm-eval-harness's gsm8k task (lm_eval/tasks/gsm8k/gsm8k.yaml):
- strict:   `#### (\\-?[0-9\\.\\,]+)`, the GSM8K training format;
- flexible: the last match of `(-?[$0-9.,]{2,})|(-?[0-9]+)`, with `\\boxed{N}` tried first (Qwen/DeepSeek style)
            and then the `#### N` answer;
- cleaning: commas, `$` and trailing `.` are dropped (the harness's `regexes_to_ignore`).
Deliberate departures, each so a right answer is not scored wrong: the LAST `####` wins (the harness takes the
first; a model that revises itself means its final line), `$` and missing spaces after `####` are accepted, and a
candidate that is not a number once cleaned ("...", "1.2.3") is skipped instead of becoming the answer.

An extracted answer is the cleaned literal ("$1,234.00" -> "1234.00"): digits stay as written so evaluation
records show what the model said. Compare answers with `numbers_equal` (exact rationals), never with `==`.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.machinery
import importlib.util
import os
import re
import sys
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from .completions import RewardError, completion_text
from .countdown import countdown_format_reward, countdown_reward

EXTRACT_MODES = ("strict", "flexible")

_STRICT = re.compile(r"####[ \t]*(\$?-?\$?[0-9.,]+)")
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
_BOXED = re.compile(r"\\boxed\{((?:[^{}]|\{[^{}]*\})*)\}")  # one level of nested braces: \boxed{18\text{ dollars}}
_NUMBER = re.compile(r"-?(?:\d+(?:\.\d+)?|\.\d+)")


def _clean(raw: str) -> str | None:
    """lm-eval's cleaning (drop `,` and `$`, trailing `.`) -> a plain decimal literal, or None if not a number."""
    text = raw.replace(",", "").replace("$", "").strip().rstrip(".")
    return text if _NUMBER.fullmatch(text) else None


def _last_number(text: str) -> str | None:
    """The last flexible-extract match that is a number once cleaned."""
    for match in reversed(list(_FLEXIBLE.finditer(text))):
        number = _clean(match.group(0))
        if number is not None:
            return number
    return None


def _strict_answer(text: str) -> str | None:
    for match in reversed(list(_STRICT.finditer(text))):
        number = _clean(match.group(1))
        if number is not None:
            return number
    return None


def extract_answer(text: str, mode: str = "strict") -> str | None:
    """The final numeric answer in a completion, cleaned ("1,234.00" -> "1234.00"), or None if there is none.

    strict: the number after the last `#### `. flexible: the last `\\boxed{...}` holding a number, else the strict
    answer, else the last number anywhere in the text.
    """
    if mode not in EXTRACT_MODES:
        raise RewardError(f"unknown extraction mode {mode!r}; valid modes: {', '.join(EXTRACT_MODES)}")
    if mode == "strict":
        return _strict_answer(text)
    for boxed in reversed(_BOXED.findall(text)):
        number = _last_number(boxed)  # \boxed{\$18 \text{ dollars}} -> "18"; LaTeX fractions are not evaluated
        if number is not None:
            return number
    strict = _strict_answer(text)
    return strict if strict is not None else _last_number(text)


def _as_fraction(value: str | None) -> Fraction | None:
    number = _clean(value) if isinstance(value, str) else None
    return Fraction(number) if number is not None else None


def numbers_equal(a: str | None, b: str | None) -> bool:
    """Exact numeric equality of two answers ("18" == "18.00", ".5" == "0.5"); None or a non-number equals nothing.

    Exact rationals, not floats: 9007199254740993 and 9007199254740992 are the same float but different answers.
    """
    x, y = _as_fraction(a), _as_fraction(b)
    return x is not None and y is not None and x == y


def gold_answer(answer: str | int) -> str:
    """A dataset's gold answer (`worked steps ... #### N`, or a bare number) -> the cleaned number N."""
    if isinstance(answer, int) and not isinstance(answer, bool):
        return str(answer)  # a local jsonl/parquet may store the answer column as integers
    if isinstance(answer, str):
        number = _strict_answer(answer) if "####" in answer else _clean(answer)
        if number is not None:
            return number
    raise RewardError(f"gold answer {answer!r} has no number: expected GSM8K's '... #### N' or a bare number; "
                      "check the dataset's answer column")


def _check_answers(completions: Sequence, answer: Sequence | None, source: str) -> None:
    if isinstance(answer, str):
        raise RewardError(f"{source}: answer must be a list of gold answers (one per completion), got one string")
    if answer is None or len(answer) != len(completions):
        got = "no answer column" if answer is None else f"{len(answer)} gold answers"
        raise RewardError(f"{source}: {len(completions)} completions but {got}; pass the dataset's answer "
                          "column repeated once per completion")


def gsm8k_reward(prompts: Sequence, completions: Sequence, answer: Sequence[str], mode: str = "flexible",
                 **kwargs: Any) -> list[float]:
    """1.0 where the completion's answer (extracted in `mode`) equals the gold answer numerically, else 0.0."""
    _check_answers(completions, answer, "gsm8k_reward")
    return [float(numbers_equal(extract_answer(completion_text(c), mode), gold_answer(a)))
            for c, a in zip(completions, answer)]


def strict_gsm8k_reward(prompts: Sequence, completions: Sequence, answer: Sequence[str], **kwargs: Any) -> list[float]:
    """gsm8k_reward counting only answers given in the `#### N` format."""
    _check_answers(completions, answer, "strict_gsm8k_reward")
    return gsm8k_reward(prompts, completions, answer, mode="strict")


def format_reward(prompts: Sequence, completions: Sequence, **kwargs: Any) -> list[float]:
    """1.0 where the completion states its answer as `#### N`, else 0.0: optional shaping towards the format that
    strict scoring needs, whatever the number's correctness."""
    if "answer" in kwargs:  # not needed here, but a length mismatch means the caller's rows are misaligned
        _check_answers(completions, kwargs["answer"], "format_reward")
    return [float(extract_answer(completion_text(c), "strict") is not None) for c in completions]


# Registry keys are the names recipes use (`rewards: [gsm8k, format]`); TRL logs each by its function __name__.
REWARD_FUNCTIONS: dict[str, Callable[..., list[float | None]]] = {
    "gsm8k": gsm8k_reward,
    "gsm8k_strict": strict_gsm8k_reward,
    "format": format_reward,
    "countdown": countdown_reward,  # TinyZero's task (countdown.py)
    "countdown_format": countdown_format_reward,
}


# Rewards that check gold answers: a run scored by one of them also reports eval_accuracy (evaluate.py).
ACCURACY_REWARDS = (gsm8k_reward, strict_gsm8k_reward)


def get_reward_function(name: str) -> Callable[..., list[float | None]]:
    """The registered reward function called `name`; an unknown name raises RewardError listing the valid ones."""
    if name in REWARD_FUNCTIONS:
        return REWARD_FUNCTIONS[name]
    close = difflib.get_close_matches(str(name), list(REWARD_FUNCTIONS), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise RewardError(f"unknown reward function {name!r}{hint}; valid names: {', '.join(REWARD_FUNCTIONS)}, or "
                      "an import path package.module:function")


def resolve_reward(entry: str | Callable) -> Callable[..., list[float | None]]:
    """A reward function from a callable (returned as is), a built-in name, or an import path `package.module:function`
    (a module importable from the current environment or working directory). Raises RewardError naming the fix."""
    if callable(entry):
        return entry
    if not isinstance(entry, str) or not entry:
        raise RewardError(f"a reward function must be a callable, a built-in name or package.module:function, "
                          f"got {entry!r}")
    if ":" not in entry:
        return get_reward_function(entry)
    module_name, _, attribute = entry.partition(":")
    if not module_name or not attribute:
        raise RewardError(f"reward {entry!r}: write an import path as package.module:function")
    try:
        module = _import_module(module_name)
    except Exception as err:  # ImportError, or the module's own error while importing
        raise RewardError(f"reward {entry!r}: cannot import {module_name} ({type(err).__name__}: {err}); check "
                          "that the module is installed or in the working directory") from err
    fn = module
    for part in attribute.split("."):
        fn = getattr(fn, part, None)
        if fn is None:
            raise RewardError(f"reward {entry!r}: module {module_name} has no attribute {attribute!r}")
    if not callable(fn):
        kind = type(fn).__name__
        raise RewardError(f"reward {entry!r} is {'an' if kind[0] in 'aeiou' else 'a'} {kind}, not a function; point "
                          "it at a callable fn(prompts, completions, **columns) -> list[float | None]")
    return fn


def _import_module(name: str):
    """`importlib.import_module(name)`, falling back to a top-level module or package in the working directory (as
    `python -m` finds one; the `eggroll-llm` script does not) without adding the directory to sys.path."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as err:
        top = name.partition(".")[0]
        spec = importlib.machinery.PathFinder.find_spec(top, [os.getcwd()]) if err.name == top else None
        if spec is None:
            raise
    module = importlib.util.module_from_spec(spec)
    sys.modules[top] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[top]
        raise
    return importlib.import_module(name)


NOT_IMPORTABLE = " (not importable)"  # marks a recorded reward that a recipe cannot name again


def reward_name(entry: str | Callable) -> str:
    """How a reward is named in config.yaml and the logs: its name or import path as given, else module:qualname,
    marked NOT_IMPORTABLE where that path does not lead back to it (a script's __main__, a lambda, a local)."""
    if isinstance(entry, str):
        return entry
    qualname = getattr(entry, "__qualname__", None) or type(entry).__name__
    name = f"{getattr(entry, '__module__', None) or '__main__'}:{qualname}"
    try:
        importable = not name.startswith("__main__:") and "<" not in qualname and resolve_reward(name) is entry
    except RewardError:
        importable = False
    return name if importable else name + NOT_IMPORTABLE
