"""Batched KV-cache generation in plain PyTorch over any transformers causal LM (docs/design.md §2, the `hf` engine).

All (member, prompt) rows decode together: prompts are left-padded into micro-batches sized to a token budget,
prefilled once, then fed one token per step through a `DynamicCache`. Rows that finished are dropped from the
batch every `compact_every` steps (`DynamicCache.batch_select_indices`), so long tails do not keep paying for
finished rows. With a `Population` (eggroll_llm.perturbed), the engine says which member each live batch row
belongs to (`population.set_rows`) whenever the rows change, so one forward serves the whole population.

We write the loop instead of calling `model.generate` because the row set shrinks mid-decode and the population
must follow it; the result is token-for-token what `generate(do_sample=False)` gives for each prompt alone.

    engine = HFEngine(model, tokenizer, population=population)
    completions = engine.generate(prompts, SamplingParams(max_new_tokens=256), member_ids=members)
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Sequence

import torch
from transformers import DynamicCache

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

# rows × (longest prompt + max_new_tokens) per micro-batch: 64K token slots is ~0.8 GB of bf16 KV cache for a
# 0.5B Qwen2 (24 layers × 2 KV heads × 64 dims) and a few MB for the embedded tiny model.
DEFAULT_MAX_BATCH_TOKENS = 65536


def plan_micro_batches(prompt_lengths: Sequence[int], max_new_tokens: int, max_batch_tokens: int,
                       max_batch_rows: int | None = None) -> list[list[int]]:
    """Row indices of each micro-batch, longest prompts first (least padding, and an OOM shows up at once).

    A micro-batch holds rows × (its longest prompt + max_new_tokens) <= max_batch_tokens token slots and at most
    max_batch_rows rows; a single row over the budget still runs, alone.
    """
    order = sorted(range(len(prompt_lengths)), key=lambda i: -prompt_lengths[i])
    batches: list[list[int]] = []
    for i in order:
        current = batches[-1] if batches else None
        width = (prompt_lengths[current[0]] if current else 0) + max_new_tokens  # first row is the longest
        if (current is None or (len(current) + 1) * width > max_batch_tokens
                or (max_batch_rows is not None and len(current) >= max_batch_rows)):
            batches.append([i])
        else:
            current.append(i)
    return batches


def sample_tokens(logits: torch.Tensor, sampling: SamplingParams, uniforms: torch.Tensor | None) -> torch.Tensor:
    """Next token of each row: argmax when greedy, else temperature / top-k / top-p sampling.

    logits: [rows, vocab] fp32; uniforms: [rows] in [0, 1), one draw per row and step, made up front from the
    seed and indexed by the row's input position, so a row's sample does not depend on which rows share its
    micro-batch (batching and compaction leave sampled outputs unchanged). Inverse-CDF over the sorted probs.
    """
    if sampling.greedy:
        return logits.argmax(dim=-1)
    logits = logits / sampling.temperature
    if sampling.top_k > 0:
        kth = logits.topk(min(sampling.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs, order = logits.softmax(dim=-1).sort(dim=-1, descending=True, stable=True)  # [rows, vocab]
    if sampling.top_p < 1:
        # drop a token once the more likely ones already reach top_p (the one crossing top_p is kept, as in HF)
        probs = probs.masked_fill(probs.cumsum(dim=-1) - probs >= sampling.top_p, 0.0)
    cdf = probs.cumsum(dim=-1)
    target = uniforms.to(cdf.device, cdf.dtype).unsqueeze(-1) * cdf[:, -1:]
    pick = torch.searchsorted(cdf, target, right=True).clamp(max=cdf.shape[-1] - 1)  # [rows, 1]
    return order.gather(-1, pick).squeeze(-1)


class HFEngine(Engine):
    """Batched KV-cache decoding over a transformers causal LM, optionally as population members."""

    def __init__(self, model, tokenizer, *, population=None, max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS,
                 max_batch_rows: int | None = None, compact_every: int = 8):
        if max_batch_tokens < 1:
            raise EngineError(f"max_batch_tokens must be >= 1 (rows × (prompt + new tokens)), got {max_batch_tokens}")
        if max_batch_rows is not None and max_batch_rows < 1:
            raise EngineError(f"max_batch_rows must be >= 1 or None (no limit), got {max_batch_rows}")
        if compact_every < 1:
            raise EngineError(f"compact_every must be >= 1 (decode steps between dropping finished rows), "
                              f"got {compact_every}")
        self.model, self.tokenizer, self.population = model, tokenizer, population
        self.max_batch_tokens, self.max_batch_rows, self.compact_every = max_batch_tokens, max_batch_rows, compact_every
        self.eos_ids = eos_token_ids(model, tokenizer)
        # padding is masked out, so its id only has to be a valid token
        self.pad_id = next(i for i in (tokenizer.pad_token_id, *self.eos_ids, 0) if i is not None)
        parameters = inspect.signature(model.forward).parameters
        # logits of the last position only: full prefill logits would be rows × prompt × vocab floats
        self._logits_to_keep = "logits_to_keep" in parameters
        # recent transformers name the KV cache argument `cache`; `past_key_values` warns and is to be removed
        self._cache_kwarg = "cache" if "cache" in parameters else "past_key_values"
        self.last_stats: EngineStats | None = None

    def generate(self, prompts: list[str] | list[list[int]], sampling: SamplingParams,
                 member_ids: Sequence[int] | None = None) -> list[Completion]:
        members = check_request(prompts, member_ids, self.population is not None)
        rows = encode_prompts(self.tokenizer, prompts)
        start = time.perf_counter()
        # one uniform per (input row, step), drawn once from the seed: see sample_tokens
        uniforms = None if sampling.greedy else torch.rand(
            (len(rows), sampling.max_new_tokens), generator=torch.Generator().manual_seed(sampling.seed))
        counts = {"forward_passes": 0, "row_steps": 0}
        batches = plan_micro_batches([len(r) for r in rows], sampling.max_new_tokens, self.max_batch_tokens,
                                     self.max_batch_rows)
        results: list[tuple[list[int], str] | None] = [None] * len(rows)
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.inference_mode():
                for batch in batches:
                    outputs = self._decode([rows[i] for i in batch], sampling,
                                           None if members is None else torch.tensor([members[i] for i in batch]),
                                           None if uniforms is None else uniforms[batch], counts)
                    for i, out in zip(batch, outputs):
                        results[i] = out
        finally:
            if members is not None:
                self.population.set_rows(None)
            self.model.train(was_training)
        completions = [make_completion(self.tokenizer, ids, reason, sampling.stop_strings) for ids, reason in results]
        self.last_stats = EngineStats(rows=len(rows), prompt_tokens=sum(map(len, rows)),
                                      generated_tokens=sum(c.num_tokens for c in completions),
                                      micro_batches=len(batches), wall_s=time.perf_counter() - start, **counts)
        return completions

    def _forward(self, input_ids, attention_mask, position_ids, cache, counts) -> torch.Tensor:
        kwargs = {"logits_to_keep": 1} if self._logits_to_keep else {}
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         use_cache=True, **{self._cache_kwarg: cache}, **kwargs)
        counts["forward_passes"] += 1
        return out.logits[:, -1, :].float()  # [rows, vocab]

    def _decode(self, rows: list[list[int]], sampling: SamplingParams, members: torch.Tensor | None,
                uniforms: torch.Tensor | None, counts: dict) -> list[tuple[list[int], str]]:
        """Generate for one micro-batch; returns (token ids, finish reason) per row, in the order given."""
        device = self.model.get_input_embeddings().weight.device
        width = max(map(len, rows))
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, ids in enumerate(rows):  # left padding: every row's next token lands in the last column
            input_ids[r, width - len(ids):] = torch.tensor(ids)
            mask[r, width - len(ids):] = 1
        input_ids, mask = input_ids.to(device), mask.to(device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [rows, width]; padding sits at 0, masked anyway
        eos = set() if sampling.ignore_eos else set(self.eos_ids)
        cache = DynamicCache(config=self.model.config)
        live = torch.arange(len(rows))  # batch position -> row index in `rows`
        done = [False] * len(rows)  # per batch position
        tokens: list[list[int]] = [[] for _ in rows]
        reasons = ["length"] * len(rows)
        window = 2 * max(map(len, sampling.stop_strings), default=0) + 8  # tokens decoded to look for a stop string
        if members is not None:
            self.population.set_rows(members)
        for step in range(sampling.max_new_tokens):
            if step:
                counts["row_steps"] += len(live)
            logits = self._forward(input_ids, mask, positions, cache, counts)
            next_ids = sample_tokens(logits, sampling, None if uniforms is None else uniforms[live, step])
            for b, (r, token) in enumerate(zip(live.tolist(), next_ids.tolist())):
                if not done[b]:
                    tokens[r].append(token)
                    if token in eos:
                        done[b], reasons[r] = True, "eos"
            if sampling.stop_strings:
                self._check_stops(live, done, tokens, reasons, sampling.stop_strings, window)
            if all(done):
                break
            input_ids = next_ids.unsqueeze(-1)  # finished rows are fed too, until compaction; their output is dropped
            mask = torch.cat([mask, mask.new_ones((len(live), 1))], dim=-1)
            positions = positions[:, -1:] + 1
            if (step + 1) % self.compact_every == 0 and any(done):
                keep = torch.tensor([b for b, d in enumerate(done) if not d])  # [live'] batch positions still open
                keep_dev = keep.to(device)
                cache.batch_select_indices(keep_dev)
                input_ids, mask, positions = input_ids[keep_dev], mask[keep_dev], positions[keep_dev]
                live, done = live[keep], [False] * len(keep)
                if members is not None:
                    self.population.set_rows(members[live])
        return [(tokens[r], reasons[r]) for r in range(len(rows))]

    def _check_stops(self, live, done, tokens, reasons, stop_strings, window) -> None:
        """Mark rows whose newest tokens complete a stop string (only the tail can hold a new occurrence)."""
        open_rows = [(b, r) for b, r in enumerate(live.tolist()) if not done[b]]
        tails = self.tokenizer.batch_decode([tokens[r][-window:] for _, r in open_rows], skip_special_tokens=True)
        for (b, r), tail in zip(open_rows, tails):
            if any(s in tail for s in stop_strings):
                done[b], reasons[r] = True, "stop"
