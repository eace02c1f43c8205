#!/usr/bin/env bash
# Build .venv-peers and run the side-by-side benchmark evals/es_peers.py in it (~25 min on one core).
#   bash evals/es_peers.sh [--repeats 3 ...]
# torch 2.13.0 goes in first; the peers go in without their declared dependencies, which their generic APIs do not
# import: eggroll-es would pull transformers/datasets, eggroll-trainer torchvision/scipy (and declares Python >= 3.12,
# though its trainer imports only torch and runs on 3.10+).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv-peers/bin/python ]; then
  python3 -m venv .venv-peers
  .venv-peers/bin/pip install -q torch==2.13.0 numpy
  .venv-peers/bin/pip install -q --no-deps torcheggroll==0.2.0 eggroll-es==0.2.0
  .venv-peers/bin/pip install -q --no-deps --ignore-requires-python eggroll-trainer==0.1.0
fi
exec .venv-peers/bin/python evals/es_peers.py --json evals/results/es_peers.json "$@"
