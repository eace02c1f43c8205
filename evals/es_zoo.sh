#!/usr/bin/env bash
# Build .venv-zoo and run evals/es_zoo.py in it: this project's classic strategies beside evosax and EvoTorch,
# and its MAP-Elites beside pyribs'.
#   bash evals/es_zoo.sh [--seeds 3 --parts functions digits maze qd ...]
# torch 2.13.0, cmaes and ribs for this project; jax (CPU) with evosax 0.3.2; EvoTorch 0.6.1 without its optional extras
# (its core imports ray, pandas, cma and gymnasium, which come in next).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-zoo/bin/python ]; then
  python3 -m venv .venv-zoo
  .venv-zoo/bin/pip install -q torch==2.13.0 numpy cmaes ribs scikit-learn matplotlib
  .venv-zoo/bin/pip install -q "jax[cpu]" evosax==0.3.2
  .venv-zoo/bin/pip install -q --no-deps evotorch==0.6.1
  .venv-zoo/bin/pip install -q packaging pandas cma ray gymnasium
fi
exec .venv-zoo/bin/python evals/es_zoo.py --json evals/results/es_zoo.json --plot evals/results/es_zoo.png "$@"
