"""A short tiny-arith EGGROLL run with `generation.engine: vllm` end to end, against the same run on the hf engine.

The vllm engine generates the hf engine's completions token for token (test_vllm_engine.py) and the update path is
shared, so the two runs' metrics agree step for step: rewards, held-out accuracy, update norms."""

import json

import pytest

pytest.importorskip("vllm")

from eggroll_llm import rewards  # noqa: E402
from eggroll_llm.config import load_config  # noqa: E402
from eggroll_llm.runlog import TIMING_KEYS  # noqa: E402
from eggroll_llm.trainer import train  # noqa: E402

pytestmark = pytest.mark.vllm


def length_reward(prompts, completions, **kw):
    """Longer is better: separates members even when none answers right, so every step really updates."""
    return [len(c) / 100 for c in completions]


def run(tmp_path, engine):
    config = load_config(None, {"output_dir": str(tmp_path / engine), "seed": 2, "rewards": ["gsm8k", "length"],
                                "max_steps": 3, "eval_every": 1, "save_every": 3, "data": {"eval_limit": 16},
                                "generation": {"engine": engine, "max_new_tokens": 48},
                                "es": {"population_size": 8, "members_per_prompt": 4, "prompts_per_member": 2,
                                       "sigma": 0.05, "lr": 0.05, "adapter_rank": 4}})
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(rewards.REWARD_FUNCTIONS, "length", length_reward)
        out = train(config, progress=False)
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_vllm_run_tracks_the_hf_run_step_for_step(tmp_path):
    vllm, hf = run(tmp_path, "vllm"), run(tmp_path, "hf")
    assert [r["step"] for r in vllm] == [0, 1, 2, 3]
    assert all(r["update_norm"] > 0 for r in vllm[1:]), "every step should move the adapter"
    assert vllm == hf
