#!/usr/bin/env bash
# The population-scaling study in one command: EGGROLL on the embedded tiny-arith model at equal rows per step
# (1,024) and equal training wall-clock, for N = 32 … 1024 members, each at the better lr of a two-value sweep;
# first on every linear layer of the blocks (recipes/tiny-arith-eggroll-blocks.yaml), then on the output head
# (recipes/tiny-arith-eggroll.yaml, at its own lr 0.05, no sweep). Two runs at a time, one CPU thread each (evals/population_scaling.py).
#   bash evals/population_scaling.sh [--wall SECONDS] [--sweep-wall SECONDS] [--sizes 32,64,...]
# Writes evals/results/population-scaling-{blocks,lm_head}/ (scaling.json, accuracy_vs_wall.png,
# gain_vs_population.png; the run directories under runs/). An interrupted study resumes where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
python evals/population_scaling.py --recipe recipes/tiny-arith-eggroll-blocks.yaml \
  --out evals/results/population-scaling-blocks --lrs 0.01,0.05 "$@"
python evals/population_scaling.py --recipe recipes/tiny-arith-eggroll.yaml \
  --out evals/results/population-scaling-lm_head --lrs 0.05 "$@"
