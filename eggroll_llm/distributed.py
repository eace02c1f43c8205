"""Scale-out (docs/design.md §8): members sharded across processes, only fitness inputs exchanged, no weight traffic.

Every process holds the whole model, adapter and Population, and regenerates each step's noise from its key
(noise.py). A process generates and scores only its shard of the population's (member, prompt) rows; the
processes all-gather the raw scores (N·J floats a step, plus one token count each), and every process shapes
fitness from the full score matrix — group-centred fitness needs per-prompt means and the global std — and folds
the identical update. Adapters therefore stay equal without any weight ever being sent; `check_in_sync` verifies
that at every checkpoint from an 8-byte digest.

Shards are contiguous runs of whole antithetic pairs (partners share their noise and their prompts), as even as
possible. Where a fitness group's members run does not matter: fitness is shaped over the gathered scores, so a
sharded step is the 1-process step; only the load balance depends on the split.

    ACCELERATE_USE_CPU=1 torchrun --nproc_per_node 2 -m eggroll_llm.cli train RECIPE.yaml          # CPU, gloo
    accelerate launch --multi_gpu --num_processes 4 -m eggroll_llm.cli train RECIPE.yaml           # GPUs, nccl

A process started without a launcher gets a `Processes` of one, no process group, and every helper here returns
its input unchanged, so a single-process run is exactly what it was before this module existed.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch

from .config import ConfigError


class DistributedError(RuntimeError):
    """A collective failed: another process died, or stopped answering within distributed_timeout_s."""


def shard_members(population_size: int, antithetic: bool, world_size: int) -> list[range]:
    """Member range of each process: contiguous whole antithetic pairs (single members without antithetic
    sampling), sizes differing by at most one pair; the first processes take the extra pairs.

    Refuses a population with fewer pairs than processes rather than leave a process idle or split a pair.
    """
    unit = 2 if antithetic else 1
    units = population_size // unit
    if units < world_size:
        kind = "antithetic pairs" if antithetic else "members"
        raise ConfigError(
            f"es.population_size {population_size} gives {units} {kind} for {world_size} processes; "
            f"every process needs at least one: use es.population_size >= {world_size * unit} or "
            f"launch at most {units} processes"
        )
    base, extra = divmod(units, world_size)
    bounds = [0]
    for rank in range(world_size):
        bounds.append(bounds[-1] + (base + (rank < extra)) * unit)
    return [range(start, stop) for start, stop in zip(bounds, bounds[1:])]


def shard_rows(population_size: int, prompts_per_member: int, antithetic: bool, world_size: int) -> list[slice]:
    """Each process's slice of the member-major (member, prompt) rows of `trainer.population_layout`."""
    return [
        slice(m.start * prompts_per_member, m.stop * prompts_per_member)
        for m in shard_members(population_size, antithetic, world_size)
    ]


def even_split(count: int, world_size: int) -> list[slice]:
    """Contiguous slices of `count` items, one per process, sizes differing by at most one (some may be empty)."""
    base, extra = divmod(count, world_size)
    bounds = [0]
    for rank in range(world_size):
        bounds.append(bounds[-1] + base + (rank < extra))
    return [slice(start, stop) for start, stop in zip(bounds, bounds[1:])]


def shard_seed(seed: int, first_row: int) -> int:
    """Sampling seed of a shard whose first row is `first_row` of the step: `seed` itself for the first shard (so a
    1-process run is unchanged), an unrelated stream for the others (rows of different shards must not share
    uniforms). Greedy decoding ignores it; sampled distributed runs therefore draw other samples than 1 process."""
    if first_row == 0:
        return seed
    digest = hashlib.blake2b(f"{int(seed)}/{int(first_row)}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


@dataclass
class Processes:
    """This process's place in the job, and the collectives the trainer uses (identities for a single process)."""

    rank: int = 0
    world_size: int = 1
    backend: str | None = None
    assigned_device: str = "cpu"  # the device accelerate gave this process (cuda:LOCAL_RANK % GPUs on GPUs)
    timeout_s: float | None = None
    received_bytes: int = 0  # what this process received from the others since the last `traffic()` call

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def device(self, configured: str | None) -> str:
        """The model's device here: in a multi-process run, an unset or plain `cuda` device means the one
        accelerate assigned this process (cuda:LOCAL_RANK; cpu under ACCELERATE_USE_CPU=1)."""
        from .models import default_device

        device = default_device(configured)
        return self.assigned_device if self.distributed and device == "cuda" else device

    def all_gather(self, values: torch.Tensor, what: str) -> torch.Tensor:
        """[W, *values.shape]: every process's `values`, in rank order. Counts the bytes received."""
        if not self.distributed:
            return values[None]
        device = torch.device("cuda", torch.cuda.current_device()) if "nccl" in str(self.backend) else "cpu"
        mine = values.to(device).contiguous()
        out = [torch.empty_like(mine) for _ in range(self.world_size)]
        try:
            torch.distributed.all_gather(out, mine)
        except RuntimeError as err:  # gloo/nccl errors (DistBackendError) are RuntimeErrors
            raise DistributedError(
                f"process {self.rank} of {self.world_size}: gathering {what} failed — another process died or did "
                f"not answer within distributed_timeout_s={self.timeout_s:g} s (its own error, in its log, says "
                f"why); backend said: {err}"
            ) from err
        self.received_bytes += (self.world_size - 1) * mine.numel() * mine.element_size()
        return torch.stack(out).cpu()

    def gather_rows(self, scores: torch.Tensor, counts: list[int],
                    shards: list[slice]) -> tuple[torch.Tensor, list[int]]:
        """All rows' scores [sum of shards] (fp32, rank order = row order) and `counts` (e.g. generated and prompt
        tokens) summed over processes, from this process's shard. Shards may differ in length: each is padded to the
        longest and the counts ride along in the same float64 message (exact for scores and counts below 2^53)."""
        if not self.distributed:
            return scores, list(counts)
        width = max(s.stop - s.start for s in shards)
        message = torch.zeros(width + len(counts), dtype=torch.float64)
        message[: scores.numel()] = scores.to(torch.float64)
        message[width:] = torch.tensor(counts, dtype=torch.float64)
        gathered = self.all_gather(message, "the step's scores")  # [W, width + len(counts)]
        rows = [gathered[r, : s.stop - s.start] for r, s in enumerate(shards)]
        return torch.cat(rows).to(torch.float32), [int(v) for v in gathered[:, width:].sum(dim=0)]

    def main_value(self, value: float, what: str) -> float:
        """The main process's `value` on every process (e.g. its step time, so wall-clock stops agree)."""
        if not self.distributed:
            return value
        return float(self.all_gather(torch.tensor([value], dtype=torch.float64), what)[0, 0])

    def share(self, count: int) -> slice:
        """This process's contiguous share of `count` items (held-out prompts)."""
        return even_split(count, self.world_size)[self.rank]

    def gather_objects(self, items: list, what: str) -> list:
        """Every process's list `items` (picklable), concatenated in rank order, on every process."""
        if not self.distributed:
            return items
        out = [None] * self.world_size
        try:
            torch.distributed.all_gather_object(out, items)
        except RuntimeError as err:
            raise DistributedError(f"process {self.rank} of {self.world_size}: gathering {what} failed — another "
                                   f"process died or did not answer within distributed_timeout_s={self.timeout_s:g} s; "
                                   f"backend said: {err}") from err
        self.received_bytes += sum(len(pickle.dumps(part)) for rank, part in enumerate(out) if rank != self.rank)
        return [item for part in out for item in part]

    def any(self, flag: bool, what: str) -> bool:
        """True on every process when `flag` is True on any of them."""
        if not self.distributed:
            return flag
        return bool(self.all_gather(torch.tensor([int(flag)], dtype=torch.int64), what).any())

    def agree(self, value: int, what: str, fix: str) -> None:
        """Raise unless every process holds the same integer `value`."""
        if not self.distributed:
            return
        values = self.all_gather(torch.tensor([value], dtype=torch.int64), what)[:, 0].tolist()
        if len(set(values)) > 1:
            raise DistributedError(f"processes disagree on {what} ({values} by rank); {fix}")

    def check_in_sync(self, state: dict, step: int) -> None:
        """Raise unless every process holds bit-identical ES state (`EggrollES.state_dict()`: adapters or trained
        weights and optimizer state; an 8-byte digest each, no weights sent)."""
        if not self.distributed:
            return
        digest = hashlib.blake2b(digest_size=8)
        for key in sorted(state):
            digest.update(state[key].detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        self.agree(
            int.from_bytes(digest.digest(), "little") >> 1,
            f"the ES state after step {step}",
            "the identical update gave different results on different processes; run every process on the "
            "same device type with deterministic kernels (torch.use_deterministic_algorithms(True), "
            "CUBLAS_WORKSPACE_CONFIG=:4096:8)",
        )

    def traffic(self, allreduce_bytes: int) -> dict:
        """The comm keys of a metrics record, then reset: bytes this process received since the last record
        (`comm_bytes`) next to what it would receive in a ring all-reduce of `allreduce_bytes` — a data-parallel
        step's fp32 gradient of the target matrices (`allreduce_bytes_equiv`). Empty for a single process."""
        if not self.distributed:
            return {}
        received, self.received_bytes = self.received_bytes, 0
        ring = 2 * (self.world_size - 1) * allreduce_bytes // self.world_size
        return {"comm_bytes": received, "allreduce_bytes_equiv": ring}


def init_processes(timeout_s: float, cpu: bool) -> Processes:
    """Join the job the launcher started (torchrun / accelerate launch set WORLD_SIZE, RANK, ...), or stand alone.

    accelerate's PartialState creates the process group: gloo when `cpu` (or ACCELERATE_USE_CPU=1), nccl on GPUs,
    with `timeout_s` on every collective, so a dead or stuck process fails the job instead of hanging it.
    """
    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    state = PartialState(cpu=cpu or parse_flag_from_env("ACCELERATE_USE_CPU"), timeout=timedelta(seconds=timeout_s))
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if state.num_processes != launched:
        raise DistributedError(
            f"the launcher started {launched} processes but accelerate set up "
            f"{state.num_processes} (no backend for this device); on CPUs set ACCELERATE_USE_CPU=1 "
            "or model.device: cpu so that the processes use gloo"
        )
    return Processes(
        rank=state.process_index,
        world_size=state.num_processes,
        backend=state.backend,
        assigned_device=str(state.device),
        timeout_s=timeout_s,
    )


def _in_process_group() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def shutdown() -> None:
    """Leave the process group at the end of a successful run (no-op without one)."""
    if _in_process_group():
        torch.distributed.destroy_process_group()


def exit_if_group_broken(code: int) -> None:
    """After a DistributedError, leave at once with `code` (no-op without a process group).

    gloo may still hold the timed-out send in a thread, and a normal interpreter exit then aborts (SIGABRT) in its
    destructor, so the job would end with -6 instead of our exit code.
    """
    if _in_process_group():
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
