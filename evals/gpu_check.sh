#!/usr/bin/env bash
# One-command GPU check (≤ 8 minutes on one H100/H200, nothing downloaded): engine benchmarks (hf, and vLLM when it
# imports) and 20-step EGGROLL / GRPO dry runs of the Qwen2.5-0.5B GSM8K recipes, all figures in one JSON file.
# evals/gpu_check.py says what each step runs.
#
#   bash evals/gpu_check.sh --data DIR [--out FILE] [--cpu-smoke]
#
# DIR holds GSM8K's train.jsonl and test.jsonl. Default output: evals/results/bench-gpu.json. A failed step is recorded
# in the JSON and the others still run; the exit code is 1 when any step failed. PYTHON picks the interpreter (default:
# python3 on PATH, e.g. an activated virtual environment with eggroll_llm installed).
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" evals/gpu_check.py "$@"
