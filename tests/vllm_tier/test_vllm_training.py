"""A short tiny-arith EGGROLL run with `generation.engine: vllm` end to end, against the same run on the hf engine.

The vllm engine generates the hf engine's completions token for token (test_vllm_engine.py) and the update path is
shared, so the two runs' metrics agree step for step: rewards, held-out accuracy, update norms."""

import json

import pytest

pytest.importorskip("vllm")

from eggroll_llm.config import load_config  # noqa: E402
from eggroll_llm.recipe import run_recipe  # noqa: E402
from eggroll_llm.runlog import TIMING_KEYS  # noqa: E402

pytestmark = pytest.mark.vllm


def run(tmp_path, engine):
    config = load_config(None, {"output_dir": str(tmp_path / engine), "seed": 2, "disable_tqdm": True,
                                "rewards": ["gsm8k", "toy_rewards:length_reward"],
                                "max_steps": 3, "eval_every": 1, "save_every": 3, "data": {"eval_limit": 16},
                                "generation": {"engine": engine, "max_new_tokens": 48},
                                "es": {"population_size": 8, "members_per_prompt": 4, "prompts_per_member": 2,
                                       "sigma": 0.05, "lr": 0.05, "adapter_rank": 4}})
    out = run_recipe(config).run_dir  # toy_rewards:length_reward separates members even when none answers right
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_vllm_run_tracks_the_hf_run_step_for_step(tmp_path):
    vllm, hf = run(tmp_path, "vllm"), run(tmp_path, "hf")
    assert [r["step"] for r in vllm] == [0, 1, 2, 3]
    assert all(r["update_norm"] > 0 for r in vllm[1:]), "every step should move the adapter"
    assert vllm == hf
