#!/usr/bin/env bash
# Member-tokens/s of EGG's int8 population forward vs the float32 population forward of the same model, across
# population sizes, one thread -> evals/results/egg/throughput.{json,png}
#   bash evals/egg_throughput.sh [--hidden 64 --layers 1 --populations 32,64,128,256,512 ...]
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python evals/egg_throughput.py --out evals/results/egg/throughput.json "$@"
