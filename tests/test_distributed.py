"""Distributed EGGROLL (docs/design.md §8): 2 gloo processes on the CPU give the 1-process run, and fail loudly.

The multi-process runs are real: torchrun (or the same environment variables set by hand) starts
tests/distributed_worker.py, which is `eggroll-llm`; the recipes name the test rewards of tests/toy_rewards.py.
"""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from eggroll_llm.checkpoint import list_checkpoints
from eggroll_llm.config import ConfigError, load_config
from eggroll_llm.distributed import Processes, even_split, shard_members, shard_rows, shard_seed
from eggroll_llm.es import population_layout
from eggroll_llm.recipe import run_recipe
from eggroll_llm.runlog import TIMING_KEYS

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_worker.py"
COMM_KEYS = {"comm_bytes", "allreduce_bytes_equiv"}

# 10 members = 5 antithetic pairs: the 2 processes get 3 and 2 pairs (12 and 8 rows), and the 5 held-out
# prompts split 3 / 2, so the uneven paths (padded gather, uneven eval shares) run for real.
RECIPE = {
    "seed": 1,
    "rewards": ["gsm8k", "toy_rewards:length_reward"],
    "max_steps": 3,
    "eval_every": 2,
    "save_every": 2,
    "data": {"eval_limit": 5},
    "generation": {"max_new_tokens": 24},
    "es": {
        "population_size": 10,
        "members_per_prompt": 10,
        "prompts_per_member": 2,
        "sigma": 0.1,
        "lr": 0.05,
        "adapter_rank": 2,
    },
}


def worker_env(**extra) -> dict:
    env = {
        **os.environ,
        "ACCELERATE_USE_CPU": "1",
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
    }
    return {**env, **extra}


def torchrun(*args, nproc=2):
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        str(WORKER),
        *map(str, args),
    ]
    done = subprocess.run(command, env=worker_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def records(run: Path, drop=TIMING_KEYS | COMM_KEYS) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k not in drop}
        for line in (run / "metrics.jsonl").read_text().splitlines()
    ]


def test_shard_members_covers_the_population_in_whole_pairs():
    for size, antithetic, world in [(10, True, 2), (32, True, 3), (8, True, 4), (5, False, 2), (64, True, 7)]:
        shards = shard_members(size, antithetic, world)
        assert len(shards) == world
        assert [m for s in shards for m in s] == list(range(size)), "every member exactly once, in order"
        lengths = [len(s) for s in shards]
        assert max(lengths) - min(lengths) <= (2 if antithetic else 1)
        if antithetic:
            assert all(s.start % 2 == 0 and len(s) % 2 == 0 for s in shards), "antithetic partners stay together"
    assert [len(s) for s in shard_members(10, True, 2)] == [6, 4]  # 5 pairs: 3 + 2, the first process the extra
    assert [len(s) for s in shard_members(5, False, 2)] == [3, 2]


def test_too_few_pairs_for_the_processes_is_refused():
    with pytest.raises(ConfigError, match="gives 2 antithetic pairs for 3 processes.*population_size >= 6"):
        shard_members(4, True, 3)


def test_shard_rows_follow_the_member_major_layout():
    members, _ = population_layout(10, 10, 2)
    shards = shard_rows(10, 2, True, 2)
    assert [members[s].unique().tolist() for s in shards] == [list(range(6)), list(range(6, 10))]
    assert shards[-1].stop == members.numel()


def test_even_split_and_shard_seed():
    assert [(s.start, s.stop) for s in even_split(5, 2)] == [(0, 3), (3, 5)]
    assert [(s.start, s.stop) for s in even_split(1, 3)] == [(0, 1), (1, 1), (1, 1)]
    assert shard_seed(123, 0) == 123  # the first shard (and a 1-process run) keeps its seed
    assert len({shard_seed(123, row) for row in (0, 12, 24)}) == 3


def test_single_process_helpers_are_identities():
    processes = Processes()
    scores = torch.tensor([0.5, 1.0])
    assert processes.gather_rows(scores, [7, 3], [slice(0, 2)]) == (scores, [7, 3])
    assert processes.main_value(1.25, "x") == 1.25 and processes.traffic(10**6) == {}


@pytest.mark.integration
def test_two_processes_equal_one_process_and_resume(tmp_path):
    """2 gloo processes (stopped after step 2, then resumed to step 3) end with the adapter and metrics of one
    uninterrupted process, while exchanging far fewer bytes than a weight all-reduce would."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    single = run_recipe(load_config(recipe, {"output_dir": str(tmp_path / "one"), "disable_tqdm": True})).run_dir
    two = tmp_path / "two"
    torchrun("train", recipe, "--output_dir", two, "--max_steps", 2, "--no-progress")
    assert [r["step"] for r in records(two)] == [0, 1, 2]
    torchrun("train", recipe, "--output_dir", two, "--resume", "--no-progress")

    ends = [load_file(str(list_checkpoints(run)[-1] / "state.safetensors")) for run in (single, two)]
    assert list_checkpoints(two)[-1].name == "step-000003"
    assert ends[0].keys() == ends[1].keys()
    assert any(v.abs().sum() > 0 for k, v in ends[0].items() if k.endswith("lora_U")), "the runs did update"
    for key in ends[0]:
        assert torch.allclose(ends[0][key], ends[1][key], rtol=0, atol=1e-6), key
    exports = [load_file(str(run / "adapter" / "adapter_model.safetensors")) for run in (single, two)]
    assert all(torch.allclose(exports[0][k], exports[1][k], rtol=0, atol=1e-6) for k in exports[0])

    assert records(two) == records(single)
    assert [r["step"] for r in records(two)] == [0, 1, 2, 3]
    raw = [json.loads(line) for line in (two / "metrics.jsonl").read_text().splitlines()]
    assert all(COMM_KEYS <= set(r) for r in raw)
    steps = [r for r in raw if r["step"] > 0]
    assert all(0 < r["comm_bytes"] < r["allreduce_bytes_equiv"] for r in steps)
    assert not COMM_KEYS & set(json.loads((single / "metrics.jsonl").read_text().splitlines()[-1]))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_by_hand(tmp_path, reward: str, timeout_s: float):
    """Two processes with the environment torchrun would give them, but no agent to kill the survivors: the
    processes themselves must notice a lost peer."""
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({**RECIPE, "rewards": [reward], "distributed_timeout_s": timeout_s}))
    common = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2"}
    return [
        subprocess.Popen(
            [sys.executable, str(WORKER), "train", str(recipe), "--output_dir", str(tmp_path / "run"), "--no-progress"],
            env=worker_env(**common, RANK=str(r), LOCAL_RANK=str(r)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]


@pytest.mark.integration
def test_a_process_that_dies_fails_the_job_at_once(tmp_path):
    """Rank 1 exits in step 2; rank 0 must stop with a clear error long before the (10 min) timeout."""
    main, other = launch_by_hand(tmp_path, "toy_rewards:die_in_step_2", timeout_s=600)
    try:
        _, err = main.communicate(timeout=120)
        assert other.wait(timeout=30) == 3
    finally:
        for p in (main, other):
            p.kill()
    assert main.returncode == 1, err[-2000:]
    assert "error: process 0 of 2: gathering the step's scores failed — another process died" in err
    assert [r["step"] for r in records(tmp_path / "run")] == [0, 1], "it failed mid-run, after step 1"


@pytest.mark.integration
def test_a_process_that_hangs_fails_the_job_after_the_timeout(tmp_path):
    """Rank 1 stops answering in step 2; rank 0 must give up after distributed_timeout_s, not wait forever."""
    main, other = launch_by_hand(tmp_path, "toy_rewards:hang_in_step_2", timeout_s=10)
    try:
        _, err = main.communicate(timeout=120)
        assert other.poll() is None, "rank 1 is still hanging in its reward function"
    finally:
        for p in (main, other):
            p.kill()
            p.communicate()
    assert main.returncode == 1, err[-2000:]
    assert "did not answer within distributed_timeout_s=10 s" in err
    assert [r["step"] for r in records(tmp_path / "run")] == [0, 1]
