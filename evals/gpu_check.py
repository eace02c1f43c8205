"""One command that checks a GPU machine end to end and writes every figure to one JSON file.

Steps, each `eggroll-llm` in its own process under a time limit, so a failure or a hang is recorded and the next
step still runs:
  eggroll_dry_run  20 steps of recipes/gsm8k-qwen2.5-0.5b-eggroll.yaml on a random-init Qwen2.5-0.5B (`--dry_run`)
  grpo_dry_run     20 steps of recipes/gsm8k-qwen2.5-0.5b-grpo.yaml, the same way
  bench_engine     `bench engine --arch qwen2-0.5b --dtype bfloat16`, N = 256: plain / perturbed / naive
  vllm_engine      the same benchmark on the vllm engine, when `import vllm` works (else recorded as skipped)
The dry runs' figures come from their metrics.jsonl: steps done, median step seconds and tokens/s, peak memory.
Nothing is downloaded: the architectures are recorded in eggroll_llm/models.py (ARCHS) and the GSM8K rows are read
from local files (`--data DIR` holding train.jsonl and test.jsonl). Budgeted for ≤ 8 minutes on one H100/H200;
`--cpu-smoke` runs the same steps at toy sizes (the embedded tiny-arith model, `--dry_run tiny`, 2 steps) on CPU in
under a minute, to check the script itself.

    bash evals/gpu_check.sh --data /path/to/gsm8k                    # writes evals/results/bench-gpu.json
    bash evals/gpu_check.sh --data /path/to/gsm8k --out FILE
    bash evals/gpu_check.sh --data /path/to/gsm8k --cpu-smoke --out /tmp/smoke.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "evals" / "results" / "bench-gpu.json"
RECIPES = {"eggroll": ROOT / "recipes" / "gsm8k-qwen2.5-0.5b-eggroll.yaml",
           "grpo": ROOT / "recipes" / "gsm8k-qwen2.5-0.5b-grpo.yaml"}
BUDGET_S = 8 * 60 - 20  # the whole check; each step's own limit below is cut to what is left

# Per step: (time limit in seconds, arguments after `eggroll-llm`). The engine layout is the recipe's (16 members
# per prompt) at one prompt per member; 64 new tokens keep the recipes' 20 steps and the naive baseline's 256
# one-member generations inside the budget.
GPU_BENCH = ["--arch", "qwen2-0.5b", "--dtype", "bfloat16", "--members", "256", "--members-per-prompt", "16",
             "--prompts-per-member", "1", "--prompt-len", "64", "--new-tokens", "32", "--repeats", "3", "--json"]
SMOKE_BENCH = ["--model", "tiny-arith", "--dtype", "float32", "--device", "cpu", "--members", "8",
               "--members-per-prompt", "2", "--prompts-per-member", "1", "--prompt-len", "8", "--new-tokens", "4",
               "--repeats", "1", "--json"]
GPU_TRAIN = {"common": ["--dry_run", "full", "--max_steps", "20", "--eval_every", "20", "--save_every", "20",
                        "--generation.max_new_tokens", "64"],
             "eggroll": ["--es.prompts_per_member", "1"], "grpo": []}
SMOKE_TRAIN = {"common": ["--dry_run", "tiny", "--max_steps", "2", "--eval_every", "2", "--save_every", "2",
                          "--generation.max_new_tokens", "8"],
               "eggroll": ["--es.population_size", "4", "--es.members_per_prompt", "2", "--es.prompts_per_member", "1"],
               "grpo": ["--grpo.prompts_per_step", "2", "--grpo.num_generations", "2"]}
LIMITS_S = {"eggroll_dry_run": 150, "grpo_dry_run": 150, "bench_engine": 200, "vllm_engine": 240}


def machine() -> dict:
    """What ran the check: GPU name(s) from nvidia-smi when present, torch and its device, vLLM's version."""
    import torch

    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    if shutil.which("nvidia-smi"):
        query = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                               capture_output=True, text=True, timeout=30)
        info["nvidia_smi"] = query.stdout.strip().splitlines() if query.returncode == 0 else query.stderr.strip()
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True)
    info["commit"] = commit.stdout.strip() if commit.returncode == 0 else None
    return info


def run_cli(args: list[str], limit_s: float, env: dict) -> tuple[dict, str]:
    """(figures with wall_s and, on failure, error; stdout) of `eggroll-llm ARGS` run as a child process."""
    start = time.perf_counter()
    command = [sys.executable, "-m", "eggroll_llm.cli", *args]
    figures: dict = {"command": "eggroll-llm " + " ".join(args)}
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=limit_s, env=env, cwd=ROOT)
    except subprocess.TimeoutExpired:
        figures.update(wall_s=round(time.perf_counter() - start, 1), error=f"timed out after {limit_s:.0f} s")
        return figures, ""
    figures["wall_s"] = round(time.perf_counter() - start, 1)
    if done.returncode != 0:
        figures["error"] = f"exit code {done.returncode}: " + done.stderr.strip()[-2000:]
    return figures, done.stdout


def bench_step(args: list[str], limit_s: float, env: dict) -> dict:
    figures, stdout = run_cli(args, limit_s, env)
    if "error" not in figures:
        try:
            figures["result"] = json.loads(stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
            figures["error"] = "no JSON line on stdout: " + stdout.strip()[-500:]
    return figures


def train_step(method: str, settings: dict, data: Path, run_dir: Path, limit_s: float, env: dict) -> dict:
    """A dry run of the method's Qwen2.5-0.5B GSM8K recipe, summarised from its metrics.jsonl."""
    args = ["train", str(RECIPES[method]), *settings["common"], *settings[method], "--data.data_path", str(data),
            "--output_dir", str(run_dir), "--no-progress"]
    figures, _ = run_cli(args, limit_s, env)
    metrics = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()] if metrics.is_file() \
        else []
    steps = [r for r in records if "step_s" in r]
    if not steps:
        figures.setdefault("error", "no training step in metrics.jsonl")
        return figures
    evals = [r for r in records if "eval_accuracy" in r]
    figures.update(steps=len(steps), step_s_median=statistics.median(r["step_s"] for r in steps),
                   tokens_per_s_median=statistics.median(r["tokens_per_s"] for r in steps),
                   peak_mem_mb=max(r["peak_mem_mb"] for r in steps),
                   completions=steps[-1]["completions"], tokens=steps[-1]["tokens"],
                   eval_s=[r.get("eval_s") for r in evals])
    return figures


def vllm_importable(env: dict) -> bool:
    probe = subprocess.run([sys.executable, "-c", "import vllm"], capture_output=True, env=env, timeout=120)
    return probe.returncode == 0


def write(out: Path, report: dict) -> None:
    """Rewritten after every step, so a killed check still leaves the steps it finished."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True, help="folder with GSM8K's train.jsonl and test.jsonl")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"JSON to write (default: {DEFAULT_OUT})")
    parser.add_argument("--cpu-smoke", action="store_true", help="the same steps at toy sizes on CPU (under a minute)")
    args = parser.parse_args(argv)
    missing = [name for name in ("train.jsonl", "test.jsonl") if not (args.data / name).is_file()]
    if missing:
        parser.error(f"--data {args.data} lacks {', '.join(missing)} (GSM8K's question/answer jsonl files)")

    env = dict(os.environ)
    if args.cpu_smoke:  # the smoke shares a CPU: one thread per process, and never a GPU
        env.setdefault("OMP_NUM_THREADS", "1")
        env["CUDA_VISIBLE_DEVICES"] = ""
    bench, train = (SMOKE_BENCH, SMOKE_TRAIN) if args.cpu_smoke else (GPU_BENCH, GPU_TRAIN)
    deadline = time.monotonic() + BUDGET_S
    report = {"mode": "cpu-smoke" if args.cpu_smoke else "gpu", "budget_s": BUDGET_S, "machine": machine()}
    write(args.out, report)
    work = Path(tempfile.mkdtemp(prefix="eggroll-gpu-check-"))

    def limit(step: str) -> float:
        return max(1.0, min(LIMITS_S[step], deadline - time.monotonic()))

    try:
        for method in ("eggroll", "grpo"):
            step = f"{method}_dry_run"
            report[step] = train_step(method, train, args.data, work / method, limit(step), env)
            write(args.out, report)
        report["bench_engine"] = bench_step(["bench", "engine", *bench], limit("bench_engine"), env)
        write(args.out, report)
        if vllm_importable(env):
            report["vllm_engine"] = bench_step(["bench", "engine", "--engine", "vllm", "--skip-naive", *bench],
                                               limit("vllm_engine"), env)
        else:
            report["vllm_engine"] = {"skipped": "vllm not importable"}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report["total_s"] = round(BUDGET_S - (deadline - time.monotonic()), 1)
    write(args.out, report)
    failed = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    print(f"wrote {args.out} in {report['total_s']:.0f} s" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
