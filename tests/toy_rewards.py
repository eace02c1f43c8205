"""Reward functions the tests train with, named in configs by import path (`toy_rewards:length_reward`): tests/ is
on sys.path under pytest (tests/conftest.py) and for scripts run from tests/ (tests/distributed_worker.py)."""

import os
import re
import time

NOT_CALLABLE = 3  # named by a recipe as a reward: refused


def length_reward(prompts, completions, **kw):
    """Longer is better: separates members even when none answers right, so every short run really updates."""
    return [len(c) / 100 for c in completions]


def bigger_answer_reward(prompts, completions, **kw):
    """A toy reward ES can climb in a few steps: the completion's last number (capped at 500), / 100."""
    numbers = [re.findall(r"\d+", c) for c in completions]
    return [min(int(found[-1]), 500) / 100 if found else 0.0 for found in numbers]


def parity_reward(prompts, completions, completion_ids=None, **kwargs):
    """Share of even token ids (TRL hands rewards completion_ids): differs between completions of any length, so
    even a random model gets gradients."""
    return [sum(t % 2 == 0 for t in ids) / len(ids) for ids in completion_ids]


def scalar_reward(prompts, completions, **kw):
    return 0.5


def none_reward(prompts, completions, **kw):
    return None


def all_none_reward(prompts, completions, **kw):
    return [None] * len(completions)


def nan_reward(prompts, completions, **kw):
    return [float("nan")] * len(completions)


def one_score_reward(prompts, completions, **kw):
    return [1.0]


def _fail_in_step_2(how: str):
    calls = []

    def reward(prompts, completions, **kw):
        calls.append(len(completions))  # call 1: the step-0 evaluation, call 2: step 1, call 3: step 2
        if os.environ.get("RANK") == "1" and len(calls) == 3:
            if how == "die":
                os._exit(3)
            time.sleep(3600)  # the test kills this process once the others have failed
        return [0.0] * len(completions)

    return reward


# The process of RANK 1 exits (code 3) or stops answering while scoring its second step (distributed tests).
die_in_step_2 = _fail_in_step_2("die")
hang_in_step_2 = _fail_in_step_2("hang")
