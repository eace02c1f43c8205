#!/usr/bin/env bash
# The three-way comparison on the embedded tiny-arith model: EGGROLL on the block linears
# (recipes/tiny-arith-eggroll-blocks.yaml), full-parameter ES as in Qiu et al. 2025 (recipes/tiny-arith-es-fullrank.yaml)
# and TRL's GRPO with its LoRA on the same block linears (recipes/tiny-arith-grpo.yaml), K seeds each (default 3),
# every run at an equal 10-minute training budget on one CPU thread, evaluated on 500 held-out problems; the three
# runs of one seed go at once. The budget is counted in each run's own CPU seconds (budget_clock: process), which on a
# quiet machine is its wall-clock, and on a machine shared with other jobs is still the same budget for every method.
# Writes evals/results/three-way-compare/ (report.md with the winner per axis, plots,
# summary.json in compare's schema) and evals/results/three-way-compare.json (with answer styles and the machine).
#   bash evals/three_way_compare.sh [--seeds K] [--eval-limit N] [--results DIR] [RUNS_DIR] [-- OVERRIDE ...]
# (about 25 minutes a seed on a 2-core CPU). Same options as evals/tiny_arith_compare.sh, which it runs.
set -euo pipefail
cd "$(dirname "$0")/.."
args=("$@")
[[ " ${args[*]} " == *" -- "* ]] || args+=(--)
COMPARE_COMMAND="evals/three_way_compare.sh $*" exec bash evals/tiny_arith_compare.sh \
  --recipes eggroll-blocks,es-fullrank,grpo --results evals/results/three-way-compare "${args[@]}" \
  --budget_clock process
