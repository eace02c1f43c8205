#!/usr/bin/env bash
# EGG (int8, integer EGGROLL) against a float32 minGRU of the same size trained by Adam, same data and wall-clock:
# validation bits/byte against time, with the uniform/unigram/bigram/zlib baselines -> evals/results/egg/train.{json,png}
#   bash evals/egg_train.sh [--wall_s 1800] [--runs DIR] [--results DIR] [-- EXTRA egg train FLAGS]
# One thread each (OMP_NUM_THREADS=1), one run after the other; default corpus: the Python standard library.
set -euo pipefail
cd "$(dirname "$0")/.."
WALL=1800
RUNS="runs/egg-$(date +%Y%m%d-%H%M)"
RESULTS=evals/results/egg
SIZE=(--hidden 64 --layers 1 --mlp_mult 2)
while [ $# -gt 0 ]; do
  case "$1" in
    --wall_s) WALL=$2; shift 2 ;;
    --runs) RUNS=$2; shift 2 ;;
    --results) RESULTS=$2; shift 2 ;;
    --) shift; break ;;
    *) echo "unknown option $1 (use --wall_s S, --runs DIR, --results DIR, -- EXTRA egg train flags)" >&2; exit 2 ;;
  esac
done
export OMP_NUM_THREADS=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$RUNS"
# the machine may be shared: sample its load every 30 s so the record says what the runs competed with
( while true; do echo "$(date -u +%FT%TZ) $(cut -d' ' -f1-3 /proc/loadavg)" >> "$RUNS/load.log"; sleep 30; done ) &
SAMPLER=$!
trap 'kill $SAMPLER' EXIT
python -m eggroll_llm.cli egg train --output_dir "$RUNS/egg" --max_wall_s "$WALL" --max_steps 1000000000 \
  --eval_every 100 "${SIZE[@]}" "$@"
python evals/egg_float.py --output_dir "$RUNS/float" --max_wall_s "$WALL" "${SIZE[@]}"
python evals/egg_plot.py "$RUNS/egg" "$RUNS/float" --out "$RESULTS" \
  --command "bash evals/egg_train.sh --wall_s $WALL${*:+ -- $*}" --load_log "$RUNS/load.log"
