"""The generation-engine interface: what every backend takes (prompts, member ids, sampling) and gives back.

docs/design.md §2: the trainer asks an engine for one completion per (member, prompt) row and never cares how it is
produced. `HFEngine` (engine/hf.py) decodes with a KV cache in plain PyTorch; `VLLMEngine` (engine/vllm.py) runs
members as per-request LoRA adapters in vLLM. Both share `check_request`, `encode_prompts`, `eos_token_ids` and
`make_completion`, so they refuse the same bad input, feed the same prompt tokens, stop on the same tokens and cut
text the same way.

Conventions follow vLLM's `SamplingParams` / `CompletionOutput`: temperature 0 is greedy, `top_k` 0 means off,
the returned text stops before the first stop string, and `finish_reason` says why a row ended.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

FINISH_REASONS = ("eos", "stop", "length")


class EngineError(ValueError):
    """A bad generation request or engine setting; the message names the value and the fix."""


@dataclass
class SamplingParams:
    """How to decode. Greedy (temperature 0) is the paper's choice for ES: exploration comes from parameter noise."""

    max_new_tokens: int = 256
    temperature: float = 0.0  # 0 = greedy argmax
    top_p: float = 1.0  # nucleus: keep the smallest set of tokens whose probability reaches top_p
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    seed: int = 0  # seeds the sampling generator; the same seed gives the same completions
    stop_strings: tuple[str, ...] = ()  # a row ends when its completion text contains one of these
    ignore_eos: bool = False  # run every row to max_new_tokens (fixed-shape benchmarks), as vLLM's flag

    def __post_init__(self):
        if isinstance(self.stop_strings, str):
            raise EngineError(f"stop_strings must be a sequence of strings, got the bare string {self.stop_strings!r}; "
                              f"wrap it: stop_strings=({self.stop_strings!r},)")
        self.stop_strings = tuple(self.stop_strings)
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise EngineError(f"max_new_tokens must be an int >= 1, got {self.max_new_tokens!r}")
        if self.temperature < 0:
            raise EngineError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise EngineError(f"top_p must lie in (0, 1] (1 = off), got {self.top_p}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise EngineError(f"top_k must be an int >= 0 (0 = off), got {self.top_k!r}")
        if any(not isinstance(s, str) or not s for s in self.stop_strings):
            raise EngineError(f"stop_strings must be non-empty strings, got {self.stop_strings!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    """One generated row: text without special tokens, cut before the first stop string."""

    text: str
    token_ids: list[int]  # every generated token, the eos token included when the row ended on it
    num_tokens: int  # len(token_ids): the tokens this row cost, for equal-budget accounting (docs/design.md §6)
    finish_reason: str  # "eos" | "stop" | "length"


@dataclass
class EngineStats:
    """What the last `generate` call cost; benchmarks read it."""

    rows: int
    prompt_tokens: int
    generated_tokens: int
    forward_passes: int  # 0 where the backend schedules its own batches and does not report them (vllm)
    micro_batches: int  # likewise
    row_steps: int  # batch rows fed through decode forwards; shows what compaction saved (0: not reported)
    wall_s: float

    @property
    def tokens_per_s(self) -> float:
        return self.generated_tokens / self.wall_s if self.wall_s > 0 else 0.0


class Engine(ABC):
    """A generation backend: one completion per prompt row, in input order."""

    last_stats: EngineStats | None = None

    @abstractmethod
    def generate(self, prompts: list[str] | list[list[int]], sampling: SamplingParams,
                 member_ids: Sequence[int] | None = None) -> list[Completion]:
        """Complete every prompt (text, or token ids); row i runs as population member `member_ids[i]` if given."""


def check_request(prompts, member_ids: Sequence[int] | None, has_population: bool) -> list[int] | None:
    """Refuse malformed requests where they enter; returns member_ids as a list of ints (or None)."""
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise EngineError("prompts must be a non-empty list of strings or of token-id lists")
    texts = all(isinstance(p, str) for p in prompts)
    ids = all(isinstance(p, (list, tuple)) and all(isinstance(t, int) for t in p) for p in prompts)
    if not (texts or ids):
        raise EngineError("prompts must be all strings or all lists of token ids, not a mix or other types")
    if member_ids is None:
        return None
    if not has_population:
        raise EngineError("member_ids were given but the engine has no population: build it with "
                          "population=Population(...) (eggroll_llm.perturbed) to generate as population members")
    members = [int(m) for m in member_ids]
    if len(members) != len(prompts):
        raise EngineError(f"member_ids has {len(members)} entries but there are {len(prompts)} prompts; "
                          f"give one member id per prompt row")
    return members


def truncate_at_stop(text: str, stop_strings: Sequence[str]) -> tuple[str, bool]:
    """`text` cut before the earliest occurrence of any stop string, and whether one occurred (vLLM's convention)."""
    cuts = [i for i in (text.find(s) for s in stop_strings) if i >= 0]
    return (text[:min(cuts)], True) if cuts else (text, False)


def encode_prompts(tokenizer, prompts) -> list[list[int]]:
    """Token ids of every prompt row (token-id prompts pass through); refuses rows that tokenise to nothing."""
    # prompts normally come from a chat template that already holds any special tokens it needs
    rows = ([list(p) for p in prompts] if not isinstance(prompts[0], str)
            else tokenizer(list(prompts), add_special_tokens=False)["input_ids"])
    empty = [i for i, r in enumerate(rows) if not r]
    if empty:
        raise EngineError(f"prompt rows {empty[:5]} are empty after tokenisation; every row needs at least one "
                          f"token (e.g. the tokenizer's bos token) to condition on")
    return rows


def eos_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's eos plus the generation config's (an int or a list: Qwen2-Instruct lists two)."""
    ids = {tokenizer.eos_token_id}
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids.update(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])
    return sorted(i for i in ids if i is not None)


def make_completion(tokenizer, token_ids: list[int], reason: str, stop_strings: Sequence[str]) -> Completion:
    """A row's Completion: its tokens decoded without special tokens and cut before the first stop string."""
    text, stopped = truncate_at_stop(tokenizer.decode(token_ids, skip_special_tokens=True), stop_strings)
    return Completion(text=text, token_ids=token_ids, num_tokens=len(token_ids),
                      finish_reason="stop" if stopped else reason)
