"""`eggroll-llm` for test subprocesses (one per rank), with the test reward functions registered.

`length` (longer is better) makes every short run update its adapter; `die_in_step_2` / `hang_in_step_2` make the
process of RANK 1 exit (code 3) or stop answering while scoring its second step, so tests can check that the job
fails with a clear error instead of hanging.

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py train RECIPE.yaml ...
"""

import os
import sys
import time

from eggroll_llm import rewards
from eggroll_llm.cli import main


def length_reward(prompts, completions, **kw):
    return [len(c) / 100 for c in completions]


def failing_reward(how: str):
    calls = []

    def reward(prompts, completions, **kw):
        calls.append(len(completions))
        if os.environ.get("RANK") == "1" and len(calls) == 2:
            if how == "die":
                os._exit(3)
            time.sleep(3600)  # the test kills this process once the others have failed
        return [0.0] * len(completions)

    return reward


if __name__ == "__main__":
    rewards.REWARD_FUNCTIONS.update(
        length=length_reward, die_in_step_2=failing_reward("die"), hang_in_step_2=failing_reward("hang")
    )
    sys.exit(main(sys.argv[1:]))
