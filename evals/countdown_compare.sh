#!/usr/bin/env bash
# Records EGGROLL vs GRPO on the embedded tiny-countdown model (Countdown, docs/results.md): K seeds per method
# (default 3), every run at an equal 10-minute training wall-clock (max_wall_s: 600 in both recipes) and evaluated on
# 200 held-out problems, then the comparison report (means with 95% intervals over seeds, docs/compare.md). As in
# evals/tiny_arith_compare.sh, the two methods' runs of one seed go at once, one CPU thread each; seeds run one after
# another.
#   bash evals/countdown_compare.sh [--seeds K] [--eval-limit N] [--results DIR] [RUNS_DIR] [-- OVERRIDE ...]
# OVERRIDEs go to every training run, as `eggroll-llm train` takes them; a quick check of the script itself:
#   bash evals/countdown_compare.sh --seeds 2 --eval-limit 10 --results /tmp/check /tmp/check-runs -- --max_wall_s 20
# Paths are relative to the repository root. Writes RUNS_DIR/{eggroll,grpo}-seedS (default runs/countdown-DATE),
# RESULTS (default evals/results/countdown-compare/: report.md, PNGs, summary.json; a previous report there is
# replaced) and RESULTS.json (the summary, the search modes of the base model and of every run
# (evals/diagnostics/countdown_modes.py), the machine, the command). Rerunning with the same RUNS_DIR keeps every run
# that finished (its log ends "run written to") and starts again any run that was interrupted.
set -euo pipefail
usage="usage: bash evals/countdown_compare.sh [--seeds K] [--eval-limit N] [--results DIR] [RUNS_DIR] [-- OVERRIDE…]"
command="bash evals/countdown_compare.sh $*"
seeds=3
limit=200
results=evals/results/countdown-compare
runs=""
overrides=()
while (($#)); do
  case $1 in
    --seeds | --eval-limit | --results)
      (($# > 1)) || { echo "$1 needs a value; $usage" >&2; exit 2; }
      case $1 in --seeds) seeds=$2 ;; --eval-limit) limit=$2 ;; --results) results=$2 ;; esac
      shift 2 ;;
    --) shift; overrides=("$@"); break ;;
    -*) echo "$usage" >&2; exit 2 ;;
    *) runs=$1; shift ;;
  esac
done
if ! [[ $seeds =~ ^[1-9][0-9]*$ && $limit =~ ^[1-9][0-9]*$ ]]; then
  echo "--seeds and --eval-limit take a positive count; $usage" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
runs=${runs:-runs/countdown-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$runs"
export OMP_NUM_THREADS=1
finished() { tail -n 1 "$runs/$1-seed$2.log" 2> /dev/null | grep -q '^run written to'; }
train() {  # train METHOD SEED: one run in the background, its pid in $pid (none when it already finished)
  pid=""
  if finished "$1" "$2"; then echo "keeping $runs/$1-seed$2 (finished)"; return; fi
  rm -rf "${runs:?}/$1-seed$2"  # an interrupted run starts again from scratch, at the same seed
  eggroll-llm train "recipes/tiny-countdown-$1.yaml" --seed "$2" --output_dir "$runs/$1-seed$2" \
    --data.eval_limit "$limit" --no-progress "${overrides[@]}" > "$runs/$1-seed$2.log" 2>&1 &
  pid=$!
}
for ((seed = 0; seed < seeds; seed++)); do
  train eggroll "$seed"; eggroll=$pid
  train grpo "$seed"; grpo=$pid
  [[ -z $eggroll ]] || wait $eggroll || { echo "EGGROLL seed $seed failed: see $runs/eggroll-seed$seed.log" >&2; exit 1; }
  [[ -z $grpo ]] || wait $grpo || { echo "GRPO seed $seed failed: see $runs/grpo-seed$seed.log" >&2; exit 1; }
done
dirs=()
for m in eggroll grpo; do
  for ((seed = 0; seed < seeds; seed++)); do dirs+=("$runs/$m-seed$seed"); done
done
eggroll-llm compare "${dirs[@]}" --out "$results" --force
# what each run changed: the share of 4-number greedy answers whose worked search stops short
# (evals/diagnostics/countdown_modes.py)
eval=(eggroll-llm eval --model tiny-countdown --task countdown --split validation --limit "$limit" --json)
"${eval[@]}" --out "$runs/base.eval.jsonl" > /dev/null
for dir in "${dirs[@]}"; do
  "${eval[@]}" --adapter "$dir/adapter" --out "$dir.eval.jsonl" > /dev/null
done
python evals/diagnostics/countdown_modes.py "$runs/base.eval.jsonl" "${dirs[@]/%/.eval.jsonl}" > "$runs/modes.jsonl"
python - "$runs" "$results" "$command" <<'PY'
import json, os, platform, sys
import torch
runs, results, command = sys.argv[1:]
summary = json.load(open(os.path.join(results, "summary.json")))
modes = [json.loads(line) for line in open(os.path.join(runs, "modes.jsonl"))]
names = ["base", *(os.path.basename(m["records"]).removesuffix(".eval.jsonl") for m in modes[1:])]
summary["search_modes"] = {name: {k: v for k, v in m.items() if k != "records"} for name, m in zip(names, modes)}
summary["machine"] = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                      "torch": torch.__version__, "threads_per_run": 1}
summary["runs_dir"] = runs
summary["command"] = command
json.dump(summary, open(results.rstrip("/") + ".json", "w"), indent=2)
PY
echo "report: $results/report.md; summary with search modes and machine: ${results%/}.json"
