"""The `eggroll-llm` command: the shipped model's recorded accuracy, --json/--out, and one-line errors on bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eggroll_llm.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
RECORDED = json.loads((ROOT / "evals" / "results" / "tiny-arith-base.json").read_text())


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_eval_reproduces_the_recorded_accuracy(capsys, tmp_path):
    subset = RECORDED["subset"]
    code, out, _ = run(capsys, "eval", "--model", "tiny-arith", "--task", "tiny-arith", "--split", subset["split"],
                       "--limit", str(subset["limit"]), "--json", "--out", str(tmp_path / "records.jsonl"))
    assert code == 0
    result = json.loads(out)
    assert result["n"] == subset["limit"]
    assert result["accuracy"] == pytest.approx(subset["accuracy"], abs=1e-9)
    assert result["strict_accuracy"] == pytest.approx(subset["strict_accuracy"], abs=1e-9)
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()]
    assert len(records) == result["n"]
    assert {"prompt", "completion", "extracted", "gold", "correct"} <= set(records[0])
    assert sum(r["correct"] for r in records) / len(records) == pytest.approx(result["accuracy"])


@pytest.mark.parametrize("argv, needle", [
    (["eval", "--limit", "0"], "--limit must be >= 1"),
    (["eval", "--task", "gsm9k"], "gsm9k"),
    (["eval", "--model", "tiny-arithm"], "unknown model"),
    (["eval", "--task", "gsm8k", "--data", "/nonexistent/gsm8k.jsonl"], "nonexistent"),
    (["train", "/nonexistent/recipe.yaml"], "does not exist"),
    (["train", "recipes/tiny-arith-eggroll.yaml", "--es.sigm", "0.1"], "did you mean es.sigma"),
    (["compare", "/nonexistent/run"], "not a run directory"),
])
def test_bad_input_is_one_clear_line(capsys, monkeypatch, argv, needle):
    monkeypatch.chdir(ROOT)
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert needle in err and err.count("\n") == 1 and "Traceback" not in err


def test_not_a_causal_lm(capsys, tmp_path):
    from transformers import BertConfig

    BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
               intermediate_size=64).save_pretrained(tmp_path / "bert")
    (tmp_path / "bert" / "tokenizer_config.json").write_text("{}")
    code, _, err = run(capsys, "eval", "--model", str(tmp_path / "bert"), "--limit", "1")
    assert code == 2 and "error" in err


def test_malformed_jsonl_names_the_line(capsys, tmp_path):
    data = tmp_path / "bad.jsonl"
    data.write_text('{"question": "q", "answer": "#### 1"}\n{not json}\n')
    code, _, err = run(capsys, "eval", "--task", "gsm8k", "--data", str(data), "--limit", "1")
    assert code == 2 and "bad.jsonl:2: not valid JSON" in err


def test_every_command_has_help(capsys):
    for command in ("eval", "train", "compare", "bench"):
        with pytest.raises(SystemExit) as exit_info:
            main([command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: eggroll-llm " + command in capsys.readouterr().out


def test_a_subcommand_imports_only_its_own_module():
    code = ("import sys; from eggroll_llm.cli import build_parser; build_parser('push'); "
            "print(sorted(m for m in ('eggroll_llm.compare', 'eggroll_llm.bench', 'eggroll_llm.export', 'torch') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
    assert out.strip() == "[]"
    listed = build_parser().format_help()  # the top-level help still lists every subcommand
    assert all(name in listed for name in ("eval", "train", "compare", "bench", "export", "push"))


def test_flags_take_dashes_everywhere_and_the_underscore_spellings_stay_aliases():
    from eggroll_llm.cli import dashed_flags
    from eggroll_llm.config import parse_overrides

    for command, underscored, dashed in [("eval", ["--few_shot", "2", "--batch_size=4", "--max_new_tokens", "8"],
                                          ["--few-shot", "2", "--batch-size=4", "--max-new-tokens", "8"]),
                                         ("train", ["r.yaml", "--dry_run", "tiny", "--no_progress", "--list_keys"],
                                          ["r.yaml", "--dry-run", "tiny", "--no-progress", "--list-keys"]),
                                         ("push", ["d", "--repo_id", "a/b"], ["d", "--repo-id", "a/b"])]:
        parser = build_parser(command)
        assert dashed_flags([command, *underscored], parser) == [command, *dashed]
        assert vars(parser.parse_args(dashed_flags([command, *underscored], parser))) == vars(
            parser.parse_args([command, *dashed]))
    # recipe overrides: the field names, in either spelling
    assert parse_overrides(["--output-dir", "d", "--es.population-size", "4"]) == parse_overrides(
        ["--output_dir", "d", "--es.population_size", "4"]) == {"output_dir": "d", "es": {"population_size": 4}}
