#!/usr/bin/env bash
# The population-scaling study in one command: EGGROLL on the embedded tiny-arith model at equal rows per step
# (1,024) and equal training wall-clock, for N = 32 … 1024 members. First on every linear layer of the blocks
# (recipes/tiny-arith-eggroll-blocks.yaml: 10 minutes a run, every N at the recipe's lr 1.0, relative to each
# layer's weight RMS; a 100-s sweep over lr 0.5 and 1.0 is run and recorded first, but at 100 s the two stay within
# the noise of 200 problems), then on the output head (recipes/tiny-arith-eggroll.yaml:
# 5 minutes a run at the recipe's lr 0.05, no sweep, N = 32, 128, 512, 1024). Two runs at a time, one CPU thread
# each (evals/population_scaling.py); about an hour on a 2-core CPU.
#   bash evals/population_scaling.sh [--wall SECONDS] [--sweep-wall SECONDS] [--sizes 32,64,...]
# Options given here apply to both studies. Writes evals/results/population-scaling-{blocks,lm_head}/ (scaling.json,
# accuracy_vs_wall.png, gain_vs_population.png; the run directories under runs/). An interrupted study resumes
# where it stopped.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
python evals/population_scaling.py --recipe recipes/tiny-arith-eggroll-blocks.yaml \
  --out evals/results/population-scaling-blocks --lrs 0.5,1 --sweep-wall 100 --lr 1 --wall 600 "$@"
python evals/population_scaling.py --recipe recipes/tiny-arith-eggroll.yaml \
  --out evals/results/population-scaling-lm_head --lrs 0.05 --wall 300 --sizes 32,128,512,1024 "$@"
