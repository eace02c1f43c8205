"""Generation engines (docs/design.md §2): `get_engine("hf", model, tokenizer, population=...)` picks a backend by name.

Backends implement `Engine.generate(prompts, sampling, member_ids)`: `hf` is the plain-PyTorch KV-cache engine,
`vllm` runs population members as per-request LoRA adapters in vLLM (an optional install: the `vllm` extra).
"""

from __future__ import annotations

import difflib

from .base import Completion, Engine, EngineError, EngineStats, SamplingParams, check_request, truncate_at_stop
from .hf import HFEngine, plan_micro_batches, sample_tokens
from .vllm import VLLMEngine

ENGINES: dict[str, type[Engine]] = {"hf": HFEngine, "vllm": VLLMEngine}

__all__ = [
    "ENGINES",
    "Completion",
    "Engine",
    "EngineError",
    "EngineStats",
    "HFEngine",
    "SamplingParams",
    "VLLMEngine",
    "check_request",
    "get_engine",
    "plan_micro_batches",
    "sample_tokens",
    "truncate_at_stop",
]


def get_engine(name: str, model, tokenizer, **kwargs) -> Engine:
    """Build the engine called `name` over `model` and `tokenizer`; kwargs go to its constructor."""
    if name in ENGINES:
        return ENGINES[name](model, tokenizer, **kwargs)
    near = difflib.get_close_matches(name, list(ENGINES), n=1)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    raise EngineError(f"unknown engine {name!r}: available engines are {sorted(ENGINES)}{hint}")
