#!/usr/bin/env bash
# What each method forgets: EGGROLL (recipes/tiny-arith-eggroll.yaml), full-parameter ES
# (recipes/tiny-arith-es-fullrank.yaml) and GRPO (recipes/tiny-arith-grpo.yaml) on the embedded tiny-arith model, and
# the two ES methods again with the retention lever on (EGGROLL's adapter decay es.weight_decay, full-parameter ES's
# es.decay_to_base with the same es.weight_decay), K seeds each (default 3), every run at an equal training budget
# counted in its own CPU seconds (budget_clock: process, default 120 s), one run at a time on one thread. Then
# `eggroll-llm compare --drift` over all runs (accuracy against off-task drift, per method mean ± 95% interval,
# the mean pairwise cosine of ΔW across seeds) and `eggroll-llm drift` over the three methods' seed-0 runs (the
# cosines and linear interpolation between them). docs/compare.md, "Drift", explains the figures.
#   bash evals/drift_compare.sh [--seeds K] [--budget S] [--decay WD] [--eval-limit N] [--results DIR]
#                               [--eggroll-recipe NAME] [--arms A,B,...] [--drift-eval-limit N] [RUNS_DIR]
#   (about 8 minutes of CPU a seed and arm; the drift measurements add about 10 minutes)
# --eggroll-recipe eggroll-blocks puts EGGROLL on the block linears (recipes/tiny-arith-eggroll-blocks.yaml) in both
# EGGROLL arms; --arms picks the study's arms among eggroll, es-fullrank, grpo, eggroll-ret, es-fullrank-ret (default
# all five). A finished run already in RUNS_DIR is kept, so an arm can reuse runs of the same recipe and budget, e.g.
# links RUNS_DIR/eggroll-s0 and eggroll-s0.log to evals/three_way_compare.sh's eggroll-blocks-seed0 and its log.
# --drift-eval-limit N scores the drift measurements (each run's final weights, each point of the linear paths) on
# the first N held-out problems instead of the runs' own --eval-limit.
# Writes RUNS_DIR/ARM-sS (default runs/drift-DATE), RESULTS (default evals/results/drift-compare/: report.md,
# summary.json with runs.*.drift, accuracy_vs_off_task_kl.png, drift-seed0/drift.json and its plots) and
# RESULTS.json (the machine and the command). A rerun with the same RUNS_DIR keeps every finished run.
set -euo pipefail
usage="usage: bash evals/drift_compare.sh [--seeds K] [--budget S] [--decay WD] [--eval-limit N] [--results DIR] \
[--eggroll-recipe NAME] [--arms A,B] [--drift-eval-limit N] [RUNS_DIR]"
command="bash evals/drift_compare.sh $*"
seeds=3
budget=120
decay=1.0
limit=100
results=evals/results/drift-compare
eggroll=eggroll
train_arms=eggroll,es-fullrank,grpo,eggroll-ret,es-fullrank-ret
drift_limit=()
runs=""
while (($#)); do
  case $1 in
    --seeds | --budget | --decay | --eval-limit | --results | --eggroll-recipe | --arms | --drift-eval-limit)
      (($# > 1)) || { echo "$1 needs a value; $usage" >&2; exit 2; }
      case $1 in
        --seeds) seeds=$2 ;; --budget) budget=$2 ;; --decay) decay=$2 ;; --eval-limit) limit=$2 ;;
        --results) results=$2 ;; --eggroll-recipe) eggroll=$2 ;; --arms) train_arms=$2 ;;
        --drift-eval-limit) drift_limit=(--eval_limit "$2") ;;
      esac
      shift 2 ;;
    -*) echo "$usage" >&2; exit 2 ;;
    *) runs=$1; shift ;;
  esac
done
if ! [[ $seeds =~ ^[1-9][0-9]*$ && $limit =~ ^[1-9][0-9]*$ && $budget =~ ^[1-9][0-9]*$ ]]; then
  echo "--seeds, --budget and --eval-limit take a positive count; $usage" >&2
  exit 2
fi
cd "$(dirname "$0")/.."
[[ -f recipes/tiny-arith-$eggroll.yaml ]] || { echo "--eggroll-recipe: no recipes/tiny-arith-$eggroll.yaml" >&2; exit 2; }
runs=${runs:-runs/drift-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$runs"
export OMP_NUM_THREADS=1
# arm name, recipe, overrides (the retention lever)
declare -A recipe=([eggroll]=$eggroll [es-fullrank]=es-fullrank [grpo]=grpo [eggroll-ret]=$eggroll
                   [es-fullrank-ret]=es-fullrank)
declare -A lever=([eggroll-ret]="--es.weight_decay $decay"
                  [es-fullrank-ret]="--es.decay_to_base true --es.weight_decay $decay")
declare -A label=([eggroll]=EGGROLL [es-fullrank]="full-parameter ES" [grpo]=GRPO [eggroll-ret]="EGGROLL + decay $decay"
                  [es-fullrank-ret]="full-parameter ES + decay_to_base $decay")
IFS=, read -r -a arms <<< "$train_arms"
labels=""
for arm in "${arms[@]}"; do
  [[ -v "recipe[$arm]" ]] || { echo "--arms: no arm '$arm' (eggroll es-fullrank grpo eggroll-ret es-fullrank-ret)" >&2
                               exit 2; }
  labels+="${labels:+,}${label[$arm]}"
done
finished() { tail -n 1 "$runs/$1-s$2.log" 2> /dev/null | grep -q 'run written to'; }
for ((seed = 0; seed < seeds; seed++)); do
  for arm in "${arms[@]}"; do
    if finished "$arm" "$seed"; then echo "keeping $runs/$arm-s$seed (finished)"; continue; fi
    rm -rf "${runs:?}/$arm-s$seed"
    # shellcheck disable=SC2086  # the lever's overrides split into words
    eggroll-llm train "recipes/tiny-arith-${recipe[$arm]}.yaml" --output_dir "$runs/$arm-s$seed" --seed "$seed" \
      --max_wall_s "$budget" --budget_clock process --eval_every 100000 --save_every 100000 \
      --data.eval_limit "$limit" --no-progress ${lever[$arm]:-} > "$runs/$arm-s$seed.log" 2>&1 \
      || { echo "$arm seed $seed failed: see $runs/$arm-s$seed.log" >&2; exit 1; }
  done
done
dirs=()
for arm in "${arms[@]}"; do
  for ((seed = 0; seed < seeds; seed++)); do dirs+=("$runs/$arm-s$seed"); done
done
eggroll-llm compare "${dirs[@]}" --drift "${drift_limit[@]}" --labels "$labels" --out "$results" --force
seed0=()  # the methods' seed-0 runs, for the cosines and the linear path between methods
for arm in eggroll es-fullrank grpo; do [[ " ${arms[*]} " != *" $arm "* ]] || seed0+=("$runs/$arm-s0"); done
eggroll-llm drift "${seed0[@]}" "${drift_limit[@]}" --out "$results/drift-seed0" --force
python - "$runs" "$results" "$command" <<'PY'
import json, os, platform, sys
import torch
runs, results, command = sys.argv[1:]
machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
           "torch": torch.__version__, "threads_per_run": 1, "load_average_at_end": os.getloadavg()}
json.dump({"machine": machine, "runs_dir": runs, "command": command}, open(results.rstrip("/") + ".json", "w"),
          indent=2)
PY
echo "report: $results/report.md; interpolation: $results/drift-seed0/; machine: ${results%/}.json"
