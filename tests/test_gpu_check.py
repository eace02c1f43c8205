"""evals/gpu_check.sh: --cpu-smoke writes every section with figures; a failing step is recorded, not fatal.

The smoke reads GSM8K-format files: the first rows of GSM8K when ../shared/data/gsm8k (or $EGGROLL_GSM8K_DIR) holds
them, else generated tiny-arith rows with the same columns. Nothing downloads and no GPU is needed.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from eggroll_llm import tiny_arith

ROOT = Path(__file__).resolve().parents[1]
GSM8K_DIR = Path(os.environ.get("EGGROLL_GSM8K_DIR", ROOT.parent / "shared" / "data" / "gsm8k"))


def load_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "evals" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gsm8k_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("gsm8k")
    for split, n in (("train", 16), ("test", 4)):
        source = GSM8K_DIR / f"{split}.jsonl"
        lines = (source.read_text().splitlines()[:n] if source.is_file()
                 else [json.dumps(row) for row in tiny_arith.make_split(split, n, 0)])
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")
    return folder


@pytest.mark.integration  # every section of the GPU check end to end (minutes of CPU)
def test_cpu_smoke_writes_every_section_with_figures(gsm8k_dir, tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run(["bash", str(ROOT / "evals" / "gpu_check.sh"), "--cpu-smoke", "--data", str(gsm8k_dir),
                           "--out", str(out)], capture_output=True, text=True, env={**os.environ,
                                                                                   "PYTHON": sys.executable})
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(out.read_text())
    assert report["mode"] == "cpu-smoke" and report["total_s"] > 0
    assert report["machine"]["device"] == "cpu" and report["machine"]["torch"]
    for method in ("eggroll", "grpo"):
        run = report[f"{method}_dry_run"]
        assert "error" not in run, run
        assert run["steps"] == 2 and run["step_s_median"] > 0 and run["peak_mem_mb"] > 0 and run["tokens"] > 0
        assert "--dry_run tiny" in run["command"] and f"gsm8k-qwen2.5-0.5b-{method}.yaml" in run["command"]
    bench = report["bench_engine"]["result"]
    for key in ("plain", "perturbed", "naive"):
        assert bench[key]["tokens_per_s"] > 0 and bench[key]["peak_mem_mb"] > 0
    assert bench["b_over_a"] > 0 and bench["b_over_c"] > 0
    vllm = report["vllm_engine"]
    assert vllm == {"skipped": "vllm not importable"} or vllm["result"]["b_over_a"] > 0


def test_a_failing_step_is_recorded_with_its_error():
    check = load_check()
    figures, stdout = check.run_cli(["train", str(ROOT / "no-such-recipe.yaml")], 120, dict(os.environ))
    assert figures["error"].startswith("exit code 2") and "no-such-recipe.yaml" in figures["error"]
    assert figures["wall_s"] >= 0 and stdout == ""


def test_data_folder_without_gsm8k_files_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load_check().main(["--data", str(tmp_path), "--cpu-smoke", "--out", str(tmp_path / "x.json")])
    assert exit_info.value.code == 2
    assert "lacks train.jsonl, test.jsonl" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
