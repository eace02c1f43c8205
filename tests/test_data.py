"""Task loading and prompt formatting: local GSM8K files, the Hub path (faked, no network), every bad input, prompts."""

import json
import os
from pathlib import Path

import datasets
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from eggroll_llm import data, tiny_arith
from eggroll_llm.data import (
    INSTRUCTION,
    DataError,
    build_prompts,
    few_shot_examples,
    format_prompt,
    load_task,
    render_prompt,
    task_dataset,
)

GSM8K_DIR = Path(os.environ.get("EGGROLL_GSM8K_DIR",
                                Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k"))
needs_gsm8k = pytest.mark.skipif(not (GSM8K_DIR / "test.jsonl").is_file(), reason=f"no GSM8K files in {GSM8K_DIR}")
CHAT_TEMPLATE = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
GOOD = {"question": "Ann has 3 pens. She buys 2 more. How many pens?", "answer": "3+2=5\n#### 5"}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def tokenizer(chat_template: str | None) -> PreTrainedTokenizerFast:
    """A word-level tokenizer built in-process (prompt formatting only renders text, so its vocabulary is moot)."""
    tok = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.chat_template = chat_template
    return fast


# --- GSM8K from local files ---------------------------------------------------------------------------------------

@needs_gsm8k
def test_gsm8k_folder_and_file_give_the_full_splits():
    train, test = load_task("gsm8k", "train", GSM8K_DIR), load_task("gsm8k", "test", str(GSM8K_DIR))
    assert (len(train), len(test)) == (7473, 1319)
    assert train.column_names == test.column_names == ["question", "answer"]
    assert all("\n#### " in answer for answer in test["answer"])
    from_file = load_task("gsm8k", "test", GSM8K_DIR / "test.jsonl")
    assert from_file.to_list() == test.to_list()
    assert not set(train["question"]) & set(test["question"])


@needs_gsm8k
def test_limit_keeps_the_first_rows():
    full = load_task("gsm8k", "test", GSM8K_DIR)
    assert load_task("gsm8k", "test", GSM8K_DIR, limit=5).to_list() == full.select(range(5)).to_list()
    assert len(load_task("gsm8k", "test", GSM8K_DIR, limit=10**6)) == len(full)
    generated = load_task("tiny-arith", "test", num_examples=60)
    assert load_task("tiny-arith", "test", limit=7).to_list() == generated.select(range(7)).to_list()


def test_local_parquet_and_numeric_answers(tmp_path):
    datasets.Dataset.from_list([GOOD, {"question": "How many?", "answer": "#### 1,234"}]).to_parquet(
        tmp_path / "test.parquet")
    assert load_task("gsm8k", "test", tmp_path)["answer"][1] == "#### 1,234"
    numeric = load_task("gsm8k", "test", write_jsonl(tmp_path / "n.jsonl", [{"question": "q?", "answer": 72}]))
    assert numeric["answer"] == ["72"]  # a bare number is a valid gold answer, kept as a string


# --- the Hub path shares the local path's normalisation -----------------------------------------------------------

def test_hub_and_local_rows_pass_the_same_normalisation(tmp_path, monkeypatch):
    rows = [dict(GOOD, extra="dropped"), {"question": "Q2?", "answer": "no number here", "extra": "x"}]
    hub_calls, gate_calls = [], []

    def fake_load_dataset(path, *args, **kwargs):
        if path == data.GSM8K_HUB_ID:
            hub_calls.append((args, kwargs))
            return datasets.Dataset.from_list(hub_rows)
        return real_load_dataset(path, *args, **kwargs)

    def spy(dataset, source):
        gate_calls.append(source)
        return real_normalise(dataset, source)

    real_load_dataset, real_normalise, hub_rows = datasets.load_dataset, data.normalise, rows[:1]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no connectivity check: load_dataset is faked
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.setattr(data, "normalise", spy)

    hub = load_task("gsm8k", "test", config="socratic")
    assert hub_calls == [(("socratic",), {"split": "test"})]
    assert hub.column_names == ["question", "answer"] and hub.to_list() == [GOOD]
    local = load_task("gsm8k", "test", write_jsonl(tmp_path / "test.jsonl", rows[:1]))
    assert local.to_list() == hub.to_list()
    assert len(gate_calls) == 2 and data.GSM8K_HUB_ID in gate_calls[0] and "test.jsonl" in gate_calls[1]

    # the same bad row fails the same way from either source
    hub_rows = rows
    with pytest.raises(DataError, match="row 2: answer 'no number here' has no number"):
        load_task("gsm8k", "test")
    with pytest.raises(DataError, match="row 2: answer 'no number here' has no number"):
        load_task("gsm8k", "test", write_jsonl(tmp_path / "bad.jsonl", rows))


def test_hub_failure_and_hub_settings_raise(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # no connectivity check: load_dataset is faked
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="could not load openai/gsm8k.*no route to host.*local"):
        load_task("gsm8k", "train")
    with pytest.raises(DataError, match="unknown gsm8k config 'socratik' \\(did you mean 'socratic'\\?\\)"):
        load_task("gsm8k", "train", config="socratik")
    with pytest.raises(DataError, match="split 'validation'.*train, test.*validation.jsonl"):
        load_task("gsm8k", "validation")


# --- bad inputs --------------------------------------------------------------------------------------------------

def text(path: Path, content: str | bytes) -> Path:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


LINE = json.dumps(GOOD)
# name -> (tmp_path -> load_task kwargs over task=gsm8k split=test, regex the DataError must match)
BAD_INPUTS = {
    "unknown task": (lambda p: dict(task="gsm8"), "unknown task 'gsm8' \\(did you mean 'gsm8k'\\?\\)"),
    "missing file": (lambda p: dict(data_path=p / "nope.jsonl"), "nope.jsonl does not exist"),
    "folder without split": (lambda p: dict(data_path=write_jsonl(p / "train.jsonl", [GOOD]).parent),
                             "holds no test.jsonl/.json/.parquet/.csv \\(splits found: train\\)"),
    "unsupported type": (lambda p: dict(data_path=text(p / "d.txt", "q,a\n")), "unsupported file type '.txt'"),
    "corrupt parquet": (lambda p: dict(data_path=text(p / "d.parquet", b"junk")),
                        "could not read .*d.parquet as parquet"),
    "malformed jsonl": (lambda p: dict(data_path=text(p / "m.jsonl", f'{LINE}\n{LINE}\n{{"answer": \n{LINE}\n')),
                        "m.jsonl:3: not valid JSON"),
    "not an object": (lambda p: dict(data_path=text(p / "o.jsonl", f"{LINE}\n[1, 2]\n")),
                      "o.jsonl:2: expected one JSON object"),
    "not utf-8": (lambda p: dict(data_path=text(p / "b.jsonl", LINE.encode() + b"\n\xff\xfe\n")),
                  "b.jsonl:2: not UTF-8"),
    "empty file": (lambda p: dict(data_path=text(p / "e.jsonl", "\n")), "e.jsonl holds no rows"),
    "lone surrogate": (lambda p: dict(data_path=text(p / "u.jsonl", f'{LINE}\n{{"question": "q \\ud800", '
                                                                     '"answer": "#### 1"}\n')),
                       "u.jsonl:2: holds a lone surrogate escape"),
    "no answer column": (lambda p: dict(data_path=write_jsonl(p / "c.jsonl", [{"question": "q?", "gold": "1"}])),
                         "has no answer column \\(columns: question, gold\\)"),
    "row without question": (lambda p: dict(data_path=write_jsonl(p / "r.jsonl", [GOOD, GOOD, {"answer": "#### 3"}])),
                             "r.jsonl, row 3: the question is missing"),
    "row without answer": (lambda p: dict(data_path=write_jsonl(p / "s.jsonl", [GOOD, {"question": "q?"}])),
                           "s.jsonl, row 2: the answer is missing"),
    "answer without number": (lambda p: dict(data_path=write_jsonl(p / "t.jsonl", [dict(GOOD, answer="#### ?")])),
                              "t.jsonl, row 1: answer '#### \\?' has no number"),
    "limit zero": (lambda p: dict(task="tiny-arith", limit=0), "--limit must be >= 1, got 0"),
    "unknown tiny-arith split": (lambda p: dict(task="tiny-arith", split="tset"),
                                 "split 'tset' \\(did you mean 'test'\\?\\)"),
    "tiny-arith with a data path": (lambda p: dict(task="tiny-arith", data_path=p), "tiny-arith is generated"),
    "num_examples for gsm8k": (lambda p: dict(data_path=p, num_examples=5), "num_examples sizes generated tiny-arith"),
    "num_examples zero": (lambda p: dict(task="tiny-arith", num_examples=0), "num_examples must be >= 1"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_input_raises_data_error_naming_the_problem(name, tmp_path):
    make_kwargs, pattern = BAD_INPUTS[name]
    with pytest.raises(DataError, match=pattern) as error:
        load_task(**{"task": "gsm8k", "split": "test", **make_kwargs(tmp_path)})
    assert "\n" not in str(error.value)  # one line, as the CLI prints it


# --- tiny-arith --------------------------------------------------------------------------------------------------

def test_tiny_arith_sizes_and_seeds():
    assert len(load_task("tiny-arith", "validation")) == data.TINY_ARITH_SIZES["validation"]
    first = load_task("tiny-arith", "train", seed=1, num_examples=50)
    again = load_task("tiny-arith", "train", seed=1, num_examples=50)
    assert first.to_list() == again.to_list() == tiny_arith.make_split("train", 50, seed=1)
    assert first.to_list() != load_task("tiny-arith", "train", seed=2, num_examples=50).to_list()


# --- prompts -----------------------------------------------------------------------------------------------------

def test_chat_template_prompt_has_turns_in_order():
    tok = tokenizer(CHAT_TEMPLATE)
    shots = [{"question": "Q1?", "answer": "#### 1"}, {"question": "Q2?", "answer": "#### 2"}]
    prompt = format_prompt(tok, "Q3?", few_shot=shots)
    turns = ["<|user|>\n" + INSTRUCTION + "\nQ1?<|end|>", "<|assistant|>\n#### 1<|end|>", "<|user|>\nQ2?<|end|>",
             "<|assistant|>\n#### 2<|end|>", "<|user|>\nQ3?<|end|>"]
    positions = [prompt.index(turn) for turn in turns]
    assert positions == sorted(positions) and prompt.startswith(turns[0]) and prompt.endswith("<|assistant|>\n")
    assert prompt.count(INSTRUCTION) == 1
    assert format_prompt(tok, "Q3?") == f"<|user|>\n{INSTRUCTION}\nQ3?<|end|>\n<|assistant|>\n"
    assert INSTRUCTION not in format_prompt(tok, "Q3?", few_shot=shots, instruction=False)
    # the template, not a hard-coded layout, decides the rendering
    assert format_prompt(tokenizer("{{ messages[-1]['content'] }}!"), "Q3?", instruction=False) == "Q3?!"


@pytest.mark.parametrize("tok", [None, tokenizer(None)], ids=["no tokenizer", "no chat template"])
def test_plain_prompt_without_chat_template(tok):
    shots = [{"question": "Q1?", "answer": "#### 1"}]
    prompt = format_prompt(tok, "Q3?", few_shot=shots)
    assert prompt.startswith(INSTRUCTION + "\n") and prompt.endswith("Question: Q3?\nAnswer:")
    assert prompt.index("Question: Q1?\nAnswer: #### 1\n\n") < prompt.index("Question: Q3?")
    assert format_prompt(tok, "Q3?", instruction=False) == "Question: Q3?\nAnswer:"


def test_few_shot_examples_are_seeded_train_rows(tmp_path):
    rows = few_shot_examples("tiny-arith", 4, seed=5)
    assert rows == few_shot_examples("tiny-arith", 4, seed=5) != few_shot_examples("tiny-arith", 4, seed=6)
    assert len({r["question"] for r in rows}) == 4 and {tiny_arith.split_of(r["question"]) for r in rows} == {"train"}
    assert few_shot_examples("tiny-arith", 0) == []
    write_jsonl(tmp_path / "train.jsonl", [dict(GOOD, question=f"q{i}?") for i in range(3)])
    assert {r["question"] for r in few_shot_examples("gsm8k", 3, data_path=tmp_path)} == {"q0?", "q1?", "q2?"}
    with pytest.raises(DataError, match="few_shot=4 but the gsm8k train split has only 3 rows"):
        few_shot_examples("gsm8k", 4, data_path=tmp_path)
    with pytest.raises(DataError, match="single file"):
        few_shot_examples("gsm8k", 1, data_path=tmp_path / "train.jsonl")
    with pytest.raises(DataError, match="few_shot must be >= 0"):
        few_shot_examples("tiny-arith", -1)


def test_build_prompts_one_per_row_with_shared_examples():
    dataset, tok = load_task("tiny-arith", "test", limit=3), tokenizer(CHAT_TEMPLATE)
    shots = few_shot_examples("tiny-arith", 2, seed=7)
    prompts = build_prompts(tok, dataset, few_shot=2, seed=7, task="tiny-arith")
    assert prompts == [format_prompt(tok, q, few_shot=shots) for q in dataset["question"]]
    assert all(q in p for q, p in zip(dataset["question"], prompts, strict=True))
    assert build_prompts(None, dataset, task="tiny-arith", instruction=False)[0] == \
        f"Question: {dataset['question'][0]}\nAnswer:"


# --- trainer datasets (task_dataset) -------------------------------------------------------------------------------


def test_task_datasets_have_a_prompt_column_beside_the_task_columns(tmp_path):
    tok = tokenizer(CHAT_TEMPLATE)
    arith = task_dataset("tiny-arith", "validation", tok, limit=3)
    assert arith.column_names == ["question", "answer", "prompt"]
    assert arith["prompt"] == build_prompts(tok, load_task("tiny-arith", "validation", limit=3), task="tiny-arith")
    countdown = task_dataset("countdown", "validation", tok, limit=4)
    assert {"nums", "target", "prompt"} <= set(countdown.column_names) and len(countdown) == 4
    assert "<answer>" in countdown["prompt"][0] and countdown["prompt"][0].endswith("<|assistant|>\n")
    assert task_dataset("countdown", "train", tok, limit=4, rows_seed=1)["nums"] != \
        task_dataset("countdown", "train", tok, limit=4, rows_seed=2)["nums"]


def test_your_own_dataset_from_files_with_a_renamed_prompt_column(tmp_path):
    rows = [{"text": f"say {i}", "k": i} for i in range(5)]
    folder = tmp_path / "own"
    folder.mkdir()
    write_jsonl(folder / "train.jsonl", rows)
    (folder / "test.csv").write_text("text,k\nsay 7,7\n")
    train = task_dataset(None, "train", None, data_path=folder, prompt_column="text", limit=3)
    assert train.column_names == ["prompt", "k"] and train["prompt"] == ["say 0", "say 1", "say 2"]
    assert task_dataset(None, "test", None, data_path=folder, prompt_column="text")["k"] == [7]
    with pytest.raises(DataError, match="has no column 'question'.*set data.prompt_column"):
        task_dataset(None, "train", None, data_path=folder, prompt_column="question")
    with pytest.raises(DataError, match="has no prompt column"):
        task_dataset(None, "train", None, data_path=folder)
    with pytest.raises((DataError, OSError), match="no-such-org/no-such-set"):  # offline here: fails in seconds
        task_dataset(None, "train", None, data_path="no-such-org/no-such-set")


def test_chat_prompts_render_through_the_chat_template():
    messages = [{"role": "user", "content": "hi"}]
    assert render_prompt(tokenizer(CHAT_TEMPLATE), messages) == "<|user|>\nhi<|end|>\n<|assistant|>\n"
    assert render_prompt(None, "plain text") == "plain text"
    with pytest.raises(DataError, match="no chat template"):
        render_prompt(tokenizer(None), messages)


def test_every_task_a_recipe_may_name_has_a_builder_and_an_unknown_one_is_refused():
    from eggroll_llm.config import ConfigError, EggrollConfig, validate
    from eggroll_llm.data import TASK_BUILDERS

    for task in TASK_BUILDERS:  # the config accepts exactly the tasks the data layer can build
        validate(EggrollConfig(data={"task": task, "data_path": None if task else "x.jsonl"}))
    with pytest.raises(ConfigError, match="data.task must be one of tiny-arith, gsm8k, countdown, None"):
        validate(EggrollConfig(data={"task": "gsm9k"}))
    with pytest.raises(DataError, match="did you mean 'gsm8k'"):
        task_dataset("gsm9k", "train", None)
