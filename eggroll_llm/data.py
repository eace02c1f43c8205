"""Task data and prompts: tiny-arith (generated) and GSM8K (Hub or local files) as `datasets.Dataset`s.

Every task yields the same two string columns, `question` and `answer` (worked steps ending `#### N`, GSM8K's
format), so one reward function and one evaluation serve them all (docs/design.md §4). Rows from the Hub and from
local files pass through the same gate, `normalise`, so a dataset that trains here also evaluates here, and a bad
row is reported where it enters (file and row) instead of deep inside a training step.

Prompts: a chat template when the tokenizer has one (the embedded model ships one), else lm-eval-harness's plain
gsm8k layout `Question: ...\\nAnswer:`. Few-shot examples always come from the train split.
"""

from __future__ import annotations

import difflib
import json
import random
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from pathlib import Path

import datasets

from . import countdown, tiny_arith
from .hub import require_hub
from .rewards import gold_answer

QA_TASKS = ("tiny-arith", "gsm8k")  # question / answer ... #### N rows (load_task)
GSM8K_HUB_ID = "openai/gsm8k"
GSM8K_CONFIGS = ("main", "socratic")
GSM8K_SPLITS = ("train", "test")  # the Hub dataset has no validation split
TINY_ARITH_SIZES = {"train": 20_000, "validation": 500, "test": 500}  # also the generated countdown splits' sizes
LOCAL_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}  # suffix -> builder
DATA_FLAGS = "train: --data.data_path DIR; eval: --data DIR"  # where each command takes the data path
INSTRUCTION = "Solve the problem step by step. End with a line '#### <number>'."


class DataError(ValueError):
    """Bad task data or data settings: unknown task/split, unreadable file, malformed rows, bad limit."""


def _check_choice(kind: str, value: str, valid: Sequence[str], fix: str = "") -> None:
    if value in valid:
        return
    close = difflib.get_close_matches(str(value), list(valid), n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise DataError(f"unknown {kind} {value!r}{hint}; choose one of {', '.join(valid)}{fix}")


def load_task(task: str, split: str = "test", data_path: str | Path | None = None, *, limit: int | None = None,
              config: str = "main", seed: int = 0, num_examples: int | None = None) -> datasets.Dataset:
    """Rows of `task`/`split` with string columns `question` and `answer` (`... #### N`).

    tiny-arith: generated from `seed`, `num_examples` rows (default: TINY_ARITH_SIZES[split]).
    gsm8k: `openai/gsm8k` (`config` main or socratic) from the Hub, or `data_path`: a .jsonl/.json/.parquet file
    (read whatever `split` says: one file is one split) or a folder holding `{split}.jsonl` or `{split}.parquet`.
    `limit` keeps the first `limit` rows.
    """
    _check_choice("task", task, QA_TASKS)
    if limit is not None and limit < 1:
        raise DataError(f"--limit must be >= 1, got {limit}")
    if task == "tiny-arith":
        if data_path is not None:
            raise DataError(f"tiny-arith is generated, not read from files: drop data_path ({data_path}) "
                            "or use task gsm8k")
        return normalise(datasets.Dataset.from_list(_tiny_arith_rows(split, num_examples, seed, limit)),
                         f"tiny-arith {split}")
    if num_examples is not None:
        raise DataError("num_examples sizes generated tiny-arith splits only; use limit to shorten gsm8k")
    dataset, source = _read_local(Path(data_path), split) if data_path is not None else _read_hub(config, split)
    if limit is not None:
        dataset = dataset.select(range(min(limit, len(dataset))))
    return normalise(dataset, source)


def _tiny_arith_rows(split: str, num_examples: int | None, seed: int, limit: int | None) -> list[dict[str, str]]:
    _check_choice("tiny-arith split", split, tiny_arith.SPLITS)
    n = TINY_ARITH_SIZES[split] if num_examples is None else num_examples
    if n < 1:
        raise DataError(f"num_examples must be >= 1, got {n}")
    # make_split(split, n) is a prefix of make_split(split, m) for m > n, so a limit need not generate the rest.
    try:
        return tiny_arith.make_split(split, n if limit is None else min(n, limit), seed)
    except ValueError as err:
        raise DataError(str(err)) from err


def _read_hub(config: str, split: str) -> tuple[datasets.Dataset, str]:
    _check_choice("gsm8k config", config, GSM8K_CONFIGS)
    _check_choice(f"{GSM8K_HUB_ID} split", split, GSM8K_SPLITS,
                  f"; for another split pass a local folder holding {split}.jsonl as the data path")
    require_hub(f"{GSM8K_HUB_ID} ({config}, {split})",
                f"pass a local folder holding GSM8K's train.jsonl and test.jsonl as the data path ({DATA_FLAGS})")
    try:
        dataset = datasets.load_dataset(GSM8K_HUB_ID, config, split=split)
    except Exception as err:  # offline, gated, rate-limited: whatever the cause, the fix is a local copy
        raise DataError(f"could not load {GSM8K_HUB_ID} ({config}, {split}) from the Hub: {err}; "
                        f"pass a local jsonl/parquet file or folder as the data path ({DATA_FLAGS})") from err
    return dataset, f"{GSM8K_HUB_ID} ({config}, {split})"


def _read_local(path: Path, split: str) -> tuple[datasets.Dataset, str]:
    path = path.expanduser()
    if path.is_dir():
        found = [path / f"{split}{suffix}" for suffix in LOCAL_FORMATS]
        found = [candidate for candidate in found if candidate.is_file()]
        if not found:
            splits = sorted({p.stem for p in path.iterdir() if p.suffix in LOCAL_FORMATS}) or ["none"]
            raise DataError(f"folder {path} holds no {split}.jsonl/.json/.parquet/.csv (splits found: "
                            f"{', '.join(splits)}); choose one of those splits or add the file")
        path = found[0]
    elif not path.exists():
        raise DataError(f"data path {path} does not exist; pass a .jsonl/.json/.parquet file or a folder "
                        f"holding {split}.jsonl")
    builder = LOCAL_FORMATS.get(path.suffix.lower())
    if builder is None:
        raise DataError(f"cannot read {path}: unsupported file type {path.suffix or '(none)'!r}; "
                        f"use one of {', '.join(LOCAL_FORMATS)}")
    if path.suffix.lower() == ".jsonl":
        _check_jsonl(path)
    try:
        with _quiet_progress():  # datasets shows a "Generating train split" bar for every new local file
            dataset = datasets.load_dataset(builder, data_files=str(path), split="train")
    except Exception as err:  # pyarrow/json errors name neither the file nor the fix
        raise DataError(f"could not read {path} as {builder}: {type(err).__name__}: {err}; "
                        f"check that it is a valid {path.suffix} file") from err
    return dataset, str(path)


@contextmanager
def _quiet_progress():
    """datasets' progress bars off for the enclosed calls, then as they were."""
    was_off = datasets.are_progress_bars_disabled()
    datasets.disable_progress_bars()
    try:
        yield
    finally:
        if not was_off:
            datasets.enable_progress_bars()


def _check_jsonl(path: Path) -> None:
    """Line-numbered errors for a local jsonl, which pyarrow would report only as a byte offset in a block."""
    rows = 0
    try:
        with path.open("rb") as file:
            for number, raw in enumerate(file, 1):
                try:
                    line = raw.decode("utf-8")
                    row = json.loads(line) if line.strip() else {}
                except UnicodeDecodeError as err:
                    raise DataError(f"{path}:{number}: not UTF-8 text ({err.reason}); "
                                    "re-encode the file as UTF-8") from None
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number}: not valid JSON ({err.msg}, column {err.colno}); "
                                    "fix or remove that line") from None
                if "\\u" in line and _has_lone_surrogate(row):  # JSON may escape them; no UTF-8 text holds one
                    raise DataError(f"{path}:{number}: holds a lone surrogate escape (\\ud800-\\udfff without its "
                                    "pair), which is not a character; fix or remove that line") from None
                if not isinstance(row, dict):
                    raise DataError(f"{path}:{number}: expected one JSON object per line, got a "
                                    f"{type(row).__name__}; write one JSON object (a row of columns) per line")
                rows += bool(row)
    except OSError as err:
        raise DataError(f"cannot read {path}: {err.strerror}; check the path and its permissions") from err
    if rows == 0:
        raise DataError(f"{path} holds no rows; write one JSON object (a row of columns) per line")


def _has_lone_surrogate(row) -> bool:
    """Whether a decoded JSON value holds a string with an unpaired UTF-16 surrogate (pyarrow rejects those)."""
    try:
        json.dumps(row, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def normalise(dataset: datasets.Dataset, source: str) -> datasets.Dataset:
    """The one gate every task's rows pass: keep `question` and `answer` as strings; each answer must hold a number.

    `source` names where the rows came from, for error messages; rows are reported 1-based.
    """
    missing = [column for column in ("question", "answer") if column not in dataset.column_names]
    if missing:
        raise DataError(f"{source} has no {' or '.join(missing)} column (columns: "
                        f"{', '.join(dataset.column_names) or 'none'}); rename its columns to question and answer")
    if len(dataset) == 0:
        raise DataError(f"{source} has no rows; point the data path at a non-empty split")
    dataset = dataset.select_columns(["question", "answer"])
    if dataset.features["answer"] != datasets.Value("string"):  # bare numeric answers (72) are valid gold answers
        dataset = dataset.cast_column("answer", datasets.Value("string"))
    for row, (question, answer) in enumerate(zip(dataset["question"], dataset["answer"], strict=True), 1):
        if not isinstance(question, str) or not question.strip():
            raise DataError(f"{source}, row {row}: the question is missing, empty or not text; fix or drop that row")
        if answer is None:
            raise DataError(f"{source}, row {row}: the answer is missing; fix or drop that row")
        try:
            gold_answer(answer)
        except ValueError:
            raise DataError(f"{source}, row {row}: answer {answer!r:.80} has no number; gold answers end with "
                            "'#### N' (or are a bare number): fix or drop that row") from None
    return dataset


def few_shot_examples(task: str, k: int, seed: int = 0, data_path: str | Path | None = None) -> list[dict[str, str]]:
    """`k` distinct train rows chosen with `seed` (the same seed gives the same examples)."""
    if k < 0:
        raise DataError(f"few_shot must be >= 0, got {k}")
    if k == 0:
        return []
    if data_path is not None and Path(data_path).is_file():
        raise DataError(f"few-shot examples come from the train split, but data path {data_path} is a single file "
                        "(maybe the split being evaluated); pass a folder holding train.jsonl or train.parquet")
    pool = load_task(task, "train", data_path)
    if k > len(pool):
        raise DataError(f"few_shot={k} but the {task} train split has only {len(pool)} rows; ask for fewer")
    return [pool[i] for i in random.Random(seed).sample(range(len(pool)), k)]


def format_prompt(tokenizer, question: str, *, few_shot: list[dict[str, str]] | None = None,
                  instruction: bool = True) -> str:
    """The prompt text for `question`, few-shot examples first.

    With a chat template: examples as user/assistant turns, the question as the last user turn, the instruction
    leading the first user turn, and the generation prompt appended. Without one (or with tokenizer None):
    lm-eval-harness's gsm8k layout, `Question: ...\\nAnswer: ...` blocks, the instruction on the first line.
    """
    shots = few_shot or []
    if getattr(tokenizer, "chat_template", None):
        messages = []
        for shot in shots:
            messages += [{"role": "user", "content": shot["question"]},
                         {"role": "assistant", "content": shot["answer"]}]
        messages.append({"role": "user", "content": question})
        if instruction:
            messages[0]["content"] = f"{INSTRUCTION}\n{messages[0]['content']}"
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    head = f"{INSTRUCTION}\n\n" if instruction else ""
    blocks = "".join(f"Question: {shot['question']}\nAnswer: {shot['answer']}\n\n" for shot in shots)
    return f"{head}{blocks}Question: {question}\nAnswer:"


def build_prompts(tokenizer, dataset: datasets.Dataset, *, few_shot: int = 0, instruction: bool = True,
                  seed: int = 0, data_path: str | Path | None = None, task: str) -> list[str]:
    """One prompt per row of `dataset`, all sharing the same `few_shot` train examples (chosen with `seed`)."""
    shots = few_shot_examples(task, few_shot, seed, data_path)
    return [format_prompt(tokenizer, question, few_shot=shots, instruction=instruction)
            for question in dataset["question"]]


def load_rows(data_path: str | Path, split: str) -> tuple[datasets.Dataset, str]:
    """(rows, where they came from) of `split`: a local file (any split: one file is one split), a local folder
    holding `{split}.jsonl/.json/.parquet/.csv`, or a Hub dataset id (`org/name`)."""
    path = Path(data_path).expanduser()
    if (path.exists() or str(data_path).count("/") != 1 or str(data_path).startswith((".", "/", "~"))
            or path.suffix.lower() in LOCAL_FORMATS):  # sub/x.jsonl is a file, never a Hub id
        return _read_local(path, split)
    require_hub(f"dataset {data_path}", "pass a local file or folder as data_path")
    try:
        return datasets.load_dataset(str(data_path), split=split), f"{data_path} ({split})"
    except Exception as err:  # offline, gated, no such split: the fix is the id, the split or a local copy
        raise DataError(f"could not load the Hub dataset {data_path} (split {split}): {type(err).__name__}: "
                        f"{str(err).splitlines()[0] if str(err) else ''}; check the id and split, or pass a local "
                        "file or folder as data_path") from err


def render_prompt(tokenizer, prompt: str | list[dict]) -> str:
    """The text the model continues: a text prompt as is, chat messages through the tokenizer's chat template with
    the generation prompt appended (TRL's convention for conversational datasets)."""
    if isinstance(prompt, str):
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise DataError("the dataset's prompts are chat messages but the tokenizer has no chat template; give text "
                        "prompts or a tokenizer with a chat template (processing_class)")
    return tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)


def check_prompts(dataset: datasets.Dataset, source: str) -> datasets.Dataset:
    """Refuse a dataset a trainer cannot read: no rows, no `prompt` column, or a prompt that is neither non-empty
    text nor a non-empty list of {"role", "content"} messages (reported with its row, 1-based)."""
    if not isinstance(dataset, datasets.Dataset):
        raise DataError(f"{source} must be a datasets.Dataset, got {type(dataset).__name__}; build one with "
                        "datasets.Dataset.from_list([{'prompt': ...}, ...])")
    if "prompt" not in dataset.column_names:
        raise DataError(f"{source} has no prompt column (columns: {', '.join(dataset.column_names) or 'none'}); "
                        "rename the column holding the prompts to prompt (recipes: data.prompt_column)")
    if len(dataset) == 0:
        raise DataError(f"{source} has no rows")
    for row, prompt in enumerate(dataset["prompt"], 1):
        text = isinstance(prompt, str) and prompt.strip()
        chat = isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "role" in m and "content" in m
                                                           for m in prompt)
        if not (text or chat):
            raise DataError(f"{source}, row {row}: the prompt must be non-empty text or a list of "
                            f"{{'role': ..., 'content': ...}} messages, got {prompt!r:.80}; fix or drop that row")
    return dataset


def task_dataset(task: str | None, split: str, tokenizer, *, data_path: str | Path | None = None,
                 prompt_column: str = "prompt", limit: int | None = None, few_shot: int = 0, seed: int = 0,
                 rows_seed: int = 0) -> datasets.Dataset:
    """A recipe's `split` as a trainer dataset: a `prompt` column (text) beside the task's own columns.

    The task's builder in TASK_BUILDERS makes it. tiny-arith / gsm8k: `question`, `answer` and the formatted prompt
    (`build_prompts`; few-shot examples chosen with `seed`). countdown: `nums`, `target`, the task prompt through the
    chat template. Generated tasks draw their rows with `rows_seed`. None: the rows at `data_path`, `prompt_column`
    renamed to `prompt`.
    """
    if task not in TASK_BUILDERS:
        _check_choice("task", task, TASKS, " (or null for your own dataset)")
    if limit is not None and limit < 1:
        raise DataError(f"limit must be >= 1, got {limit}")
    return TASK_BUILDERS[task](task=task, split=split, tokenizer=tokenizer, data_path=data_path,
                               prompt_column=prompt_column, limit=limit, few_shot=few_shot, seed=seed,
                               rows_seed=rows_seed)


def _qa_dataset(*, task, split, tokenizer, data_path, limit, few_shot, seed, rows_seed, **_) -> datasets.Dataset:
    """tiny-arith / gsm8k: question, answer and the formatted prompt."""
    rows = load_task(task, split, data_path, limit=limit, seed=rows_seed)
    prompts = build_prompts(tokenizer, rows, few_shot=few_shot, seed=seed, data_path=data_path, task=task)
    return rows.add_column("prompt", prompts)


def _countdown_dataset(*, split, tokenizer, data_path, limit, rows_seed, **_) -> datasets.Dataset:
    """countdown: generated rows (or data_path's, with nums and target columns) and the task prompt."""
    if data_path is None:
        _check_choice("countdown split", split, countdown.SPLITS)
        n = TINY_ARITH_SIZES[split] if limit is None else min(limit, TINY_ARITH_SIZES[split])
        rows = datasets.Dataset.from_list(countdown.make_split(split, n, rows_seed))
        source = f"countdown {split}"
    else:
        rows, source = load_rows(data_path, split)
    rows = _first(rows, limit)
    missing = [c for c in ("nums", "target") if c not in rows.column_names]
    if missing:
        raise DataError(f"{source} has no {' or '.join(missing)} column (columns: {', '.join(rows.column_names)}); "
                        "countdown rows hold nums (a list of ints) and target (an int)")
    prompts = [render_prompt(tokenizer, [{"role": "user", "content": countdown.countdown_prompt(n, t)}])
               if getattr(tokenizer, "chat_template", None) else countdown.countdown_prompt(n, t)
               for n, t in zip(rows["nums"], rows["target"])]
    return check_prompts(rows.add_column("prompt", prompts), source)


def _own_dataset(*, split, data_path, prompt_column, limit, **_) -> datasets.Dataset:
    """task null: the rows at data_path, prompt_column renamed to prompt."""
    if data_path is None:
        raise DataError("a dataset of your own needs data_path: a local file or folder, or a Hub dataset id")
    rows, source = load_rows(data_path, split)
    rows = _first(rows, limit)
    if prompt_column != "prompt":
        if prompt_column not in rows.column_names:
            raise DataError(f"{source} has no column {prompt_column!r} (columns: {', '.join(rows.column_names)}); "
                            "set data.prompt_column to the column holding the prompts")
        if "prompt" in rows.column_names:
            rows = rows.remove_columns("prompt")
        rows = rows.rename_column(prompt_column, "prompt")
    return check_prompts(rows, source)


# data.task -> the builder of its trainer datasets; None: a dataset of your own. A new task is one entry here.
TASK_BUILDERS: dict[str | None, Callable[..., datasets.Dataset]] = {
    "tiny-arith": _qa_dataset,
    "gsm8k": _qa_dataset,
    "countdown": _countdown_dataset,
    None: _own_dataset,
}
TASKS = tuple(name for name in TASK_BUILDERS if name is not None)


def _first(rows: datasets.Dataset, limit: int | None) -> datasets.Dataset:
    return rows if limit is None else rows.select(range(min(limit, len(rows))))
