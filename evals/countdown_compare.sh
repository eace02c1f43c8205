#!/usr/bin/env bash
# Records EGGROLL, full-parameter ES and GRPO on the embedded tiny-countdown model (Countdown, docs/results.md):
# recipes/tiny-countdown-{eggroll,es-fullrank,grpo}.yaml, K seeds each (default 3), every run at an equal 10-minute
# training budget on one CPU thread, evaluated on 200 held-out problems, then the comparison report (means with 95%
# intervals over seeds, docs/compare.md) and each run's search modes (evals/diagnostics/countdown_modes.py). The runs
# of one seed go at once; the budget is counted in each run's own CPU seconds (budget_clock: process), the same for
# every method however many runs share the machine.
#   bash evals/countdown_compare.sh [--seeds K] [--eval-limit N] [--results DIR] [--recipes A,B] [--seeds-at-once]
#                                   [RUNS_DIR] [-- OVERRIDE ...]
# (15-25 minutes a seed on a 2-core CPU). It runs evals/tiny_arith_compare.sh --task tiny-countdown, whose options,
# resuming and outputs it has; a quick check of the script itself:
#   bash evals/countdown_compare.sh --seeds 2 --eval-limit 10 --results /tmp/check /tmp/check-runs -- --max_wall_s 20
# Writes RUNS_DIR/{eggroll,es-fullrank,grpo}-seedS (default runs/compare-DATE) and RESULTS (default
# evals/results/countdown-compare/, with RESULTS.json beside it: the summary, search modes, machine and command).
set -euo pipefail
cd "$(dirname "$0")/.."
args=("$@")
[[ " ${args[*]} " == *" -- "* ]] || args+=(--)
COMPARE_COMMAND="evals/countdown_compare.sh $*" exec bash evals/tiny_arith_compare.sh --task tiny-countdown \
  --recipes eggroll,es-fullrank,grpo --eval-limit 200 --results evals/results/countdown-compare "${args[@]}" \
  --budget_clock process
