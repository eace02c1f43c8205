"""`eggroll-llm` for test subprocesses (one per rank): its folder (tests/) is on sys.path, so recipes name the test
rewards by import path, e.g. `toy_rewards:length_reward` or `toy_rewards:die_in_step_2`.

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py train RECIPE.yaml ...
"""

import sys

from eggroll_llm.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
