#!/usr/bin/env bash
# Reproduces the README's tiny-arith comparison: EGGROLL vs GRPO on the embedded model at an equal 10-minute
# training wall-clock each (max_wall_s: 600 in both recipes), then the comparison report. Both runs go at once,
# one CPU thread each, so on a 2-core machine each method has one core to itself for the same 10 minutes.
#   bash evals/tiny_arith_compare.sh [RUNS_DIR]      (about 12 minutes on a 2-core CPU)
# Writes RUNS_DIR/{eggroll,grpo}, evals/results/tiny-arith-compare/ (report.md, PNGs, summary.json) and
# evals/results/tiny-arith-compare.json (summary, answer styles before and after, machine).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-runs/compare-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$(dirname "$runs")"
export OMP_NUM_THREADS=1
eggroll-llm train recipes/tiny-arith-eggroll.yaml --output_dir "$runs/eggroll" --no-progress > "$runs.eggroll.log" 2>&1 &
eggroll=$!
eggroll-llm train recipes/tiny-arith-grpo.yaml --output_dir "$runs/grpo" --no-progress > "$runs.grpo.log" 2>&1 &
grpo=$!
wait $eggroll || { echo "EGGROLL run failed: see $runs.eggroll.log" >&2; exit 1; }
wait $grpo || { echo "GRPO run failed: see $runs.grpo.log" >&2; exit 1; }
eggroll-llm compare "$runs/eggroll" "$runs/grpo" --labels eggroll,grpo --out evals/results/tiny-arith-compare
# what each run changed: the share of greedy held-out answers that show their work (evals/diagnostics/answer_modes.py)
eggroll-llm eval --split validation --limit 200 --json --out "$runs/base.eval.jsonl" > /dev/null
for m in eggroll grpo; do
  eggroll-llm eval --adapter "$runs/$m/adapter" --split validation --limit 200 --json --out "$runs/$m.eval.jsonl" > /dev/null
done
python evals/diagnostics/answer_modes.py "$runs"/{base,eggroll,grpo}.eval.jsonl > "$runs/answer_modes.jsonl"
python - "$runs" <<'PY'
import json, os, platform, sys
import torch
summary = json.load(open("evals/results/tiny-arith-compare/summary.json"))
modes = [json.loads(line) for line in open(os.path.join(sys.argv[1], "answer_modes.jsonl"))]
summary["answer_modes"] = {name: {k: v for k, v in m.items() if k != "records"}
                           for name, m in zip(["base", "eggroll", "grpo"], modes)}
summary["machine"] = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                      "torch": torch.__version__, "threads_per_run": 1}
summary["runs_dir"] = sys.argv[1]
json.dump(summary, open("evals/results/tiny-arith-compare.json", "w"), indent=2)
PY
