#!/usr/bin/env bash
# Reproduces the README's tiny-arith comparison: EGGROLL vs GRPO on the embedded model, K seeds per method (default
# 3), every run at an equal 10-minute training wall-clock (max_wall_s: 600 in both recipes) and evaluated on 500
# held-out problems, then the comparison report (means with 95% intervals over seeds, docs/compare.md). The
# methods' runs of one seed go at once, one CPU thread each, so on a 2-core machine two runs have one core each
# for the same 10 minutes; the seeds run one after another. --recipes picks other recipes/tiny-arith-NAME.yaml
# (evals/three_way_compare.sh runs eggroll-blocks,es-fullrank,grpo). --task tiny-countdown runs
# recipes/tiny-countdown-NAME.yaml instead, scored on Countdown (evals/countdown_compare.sh).
#   bash evals/tiny_arith_compare.sh [--seeds K] [--eval-limit N] [--results DIR] [--recipes A,B,...]
#                                    [--task tiny-arith|tiny-countdown] [--seeds-at-once] [RUNS_DIR] [-- OVERRIDE ...]
# --seeds-at-once starts every seed's runs together instead of one seed after another (with budget_clock: process,
# each run still gets its own budget of CPU seconds, however many share the machine).
#   (about 20 minutes a seed on a 2-core CPU, an hour for 3: evaluating 500 problems every 5 steps adds to the
#   10 minutes of training each run is allowed)
# OVERRIDEs go to every training run, as `eggroll-llm train` takes them; a quick check of the script itself:
#   bash evals/tiny_arith_compare.sh --seeds 2 --eval-limit 20 --results /tmp/check /tmp/check-runs -- --max_wall_s 20
# Paths are relative to the repository root. Writes RUNS_DIR/{eggroll,grpo}-seedS (default runs/compare-DATE),
# RESULTS (default evals/results/tiny-arith-compare/: report.md, PNGs, summary.json; a previous report there is
# replaced) and RESULTS.json (the summary, answer styles of the base model and of every run, the machine, the command).
# Rerunning with the same RUNS_DIR keeps every run that finished (the last line of its log says "run written to") and
# starts again any run that was interrupted, so a stopped script picks up where it left off.
set -euo pipefail
script=${COMPARE_COMMAND:-evals/tiny_arith_compare.sh}
usage="usage: bash ${script%% *} [--seeds K] [--eval-limit N] [--results DIR] \
[--recipes A,B] [--task tiny-arith|tiny-countdown] [--seeds-at-once] [RUNS_DIR] [-- OVERRIDE…]"
together=0
command="bash ${COMPARE_COMMAND:-evals/tiny_arith_compare.sh $*}"
recipes=eggroll,grpo
task=tiny-arith
seeds=3
limit=500
results=evals/results/tiny-arith-compare
runs=""
overrides=()
while (($#)); do
  case $1 in
    --seeds | --eval-limit | --results | --recipes | --task)
      (($# > 1)) || { echo "$1 needs a value; $usage" >&2; exit 2; }
      case $1 in
        --seeds) seeds=$2 ;; --eval-limit) limit=$2 ;; --results) results=$2 ;; --recipes) recipes=$2 ;; --task) task=$2 ;;
      esac
      shift 2 ;;
    --seeds-at-once) together=1; shift ;;
    --) shift; overrides=("$@"); break ;;
    -*) echo "$usage" >&2; exit 2 ;;
    *) runs=$1; shift ;;
  esac
done
if ! [[ $seeds =~ ^[1-9][0-9]*$ && $limit =~ ^[1-9][0-9]*$ ]]; then
  echo "--seeds and --eval-limit take a positive count; $usage" >&2
  exit 2
fi
case $task in  # what evaluates a run of the task, and what tells its answer styles apart (evals/diagnostics/)
  tiny-arith) eval=(eggroll-llm eval) modes=(answer_modes evals/diagnostics/answer_modes.py) ;;
  tiny-countdown) eval=(eggroll-llm eval --task countdown) modes=(search_modes evals/diagnostics/countdown_modes.py) ;;
  *) echo "--task takes tiny-arith or tiny-countdown, got '$task'; $usage" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
IFS=, read -r -a methods <<< "$recipes"
for m in "${methods[@]}"; do
  [[ -f recipes/$task-$m.yaml ]] || { echo "--recipes: no recipes/$task-$m.yaml; $usage" >&2; exit 2; }
done
runs=${runs:-runs/compare-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$runs"
export OMP_NUM_THREADS=1
finished() { tail -n 1 "$runs/$1-seed$2.log" 2> /dev/null | grep -q 'run written to'; }
train() {  # train METHOD SEED: one run in the background, its pid in $pid (none when it already finished)
  pid=""
  if finished "$1" "$2"; then echo "keeping $runs/$1-seed$2 (finished)"; return; fi
  rm -rf "${runs:?}/$1-seed$2"  # an interrupted run starts again from scratch, at the same seed
  eggroll-llm train "recipes/$task-$1.yaml" --seed "$2" --output_dir "$runs/$1-seed$2" \
    --data.eval_limit "$limit" --no-progress "${overrides[@]}" > "$runs/$1-seed$2.log" 2>&1 &
  pid=$!
}
pids=() names=()
for ((seed = 0; seed < seeds; seed++)); do
  for m in "${methods[@]}"; do train "$m" "$seed"; pids+=("$pid"); names+=("$m-seed$seed"); done
  if ((!together || seed == seeds - 1)); then
    for i in "${!pids[@]}"; do
      [[ -z ${pids[$i]} ]] || wait "${pids[$i]}" || { echo "${names[$i]} failed: see $runs/${names[$i]}.log" >&2; exit 1; }
    done
    pids=() names=()
  fi
done
dirs=()
for m in "${methods[@]}"; do
  for ((seed = 0; seed < seeds; seed++)); do dirs+=("$runs/$m-seed$seed"); done
done
eggroll-llm compare "${dirs[@]}" --labels "$recipes" --out "$results" --force  # groups named by their recipes
# what each run changed: tiny-arith, the share of greedy held-out answers that show their work; tiny-countdown, the
# share of 4-number answers whose worked search stops short (the diagnostics script named in $modes)
eval+=(--split validation --limit "$limit" --json)
"${eval[@]}" --model "$task" --out "$runs/base.eval.jsonl" > /dev/null
for dir in "${dirs[@]}"; do  # what the run trained: an adapter, or (full-parameter runs) the whole model
  if [[ -d $dir/adapter ]]; then trained=(--model "$task" --adapter "$dir/adapter"); else trained=(--model "$dir/model"); fi
  "${eval[@]}" "${trained[@]}" --out "$dir.eval.jsonl" > /dev/null
done
python "${modes[1]}" "$runs/base.eval.jsonl" "${dirs[@]/%/.eval.jsonl}" > "$runs/${modes[0]}.jsonl"
python - "$runs" "$results" "$command" "${modes[0]}" <<'PY'
import json, os, platform, sys
import torch
runs, results, command, key = sys.argv[1:]
summary = json.load(open(os.path.join(results, "summary.json")))
modes = [json.loads(line) for line in open(os.path.join(runs, key + ".jsonl"))]
names = ["base", *(os.path.basename(m["records"]).removesuffix(".eval.jsonl") for m in modes[1:])]
summary[key] = {name: {k: v for k, v in m.items() if k != "records"} for name, m in zip(names, modes)}
summary["machine"] = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                      "torch": torch.__version__, "threads_per_run": 1}
summary["runs_dir"] = runs
summary["command"] = command
json.dump(summary, open(results.rstrip("/") + ".json", "w"), indent=2)
PY
echo "report: $results/report.md; summary with ${modes[0]//_/ } and machine: ${results%/}.json"
