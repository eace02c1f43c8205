"""HFEngine against transformers' own `generate`, and the invariants batching must keep (docs/design.md §2).

Tiny random Qwen2 / Llama / GPT-2 models (GPT-2 has absolute positions, so it alone catches wrong position_ids
under left padding; float64, so no near-tie in the logits can flip an argmax between batch shapes) and an
in-process char-level tokenizer: nothing is downloaded.
"""

from __future__ import annotations

import string

import pytest
import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from eggroll_llm.engine import (
    EngineError,
    HFEngine,
    SamplingParams,
    get_engine,
    plan_micro_batches,
    sample_tokens,
    truncate_at_stop,
)

PROMPTS = ["what is 2+3?", "ab", "hello there, friend", "x=1", "12 + 45 = ", "the cat sat", "q"]
MAX_NEW = 14
CHARS = string.ascii_lowercase + string.digits + " .,?=+#\n"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Ops on these tiny models take microseconds: on a shared 2-core box, thread hand-offs would dominate."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(CHARS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")  # one token per character
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>")


def tiny_model(arch: str, vocab_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    common = {"vocab_size": vocab_size, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
              "num_attention_heads": 2, "num_key_value_heads": 2, "head_dim": 32, "max_position_embeddings": 128,
              "initializer_range": 0.2, "pad_token_id": 0, "bos_token_id": None, "eos_token_id": None}
    if arch == "gpt2":  # absolute position embeddings: the one family where wrong position_ids change outputs
        model = GPT2LMHeadModel(GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=2, n_head=2, n_positions=128,
                                           initializer_range=0.2, pad_token_id=0, bos_token_id=None,
                                           eos_token_id=None))
    else:
        model = (Qwen2ForCausalLM(Qwen2Config(**common)) if arch == "qwen2"
                 else LlamaForCausalLM(LlamaConfig(**common)))
    return model.to(torch.float64).eval()


def reference(model, tokenizer, prompt: str, eos: list[int] | None) -> list[int]:
    """`model.generate` on the prompt alone (no padding), cut after the first eos token as the engine reports it."""
    ids = torch.tensor([tokenizer(prompt, add_special_tokens=False)["input_ids"]])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW,
                         do_sample=False, eos_token_id=eos, pad_token_id=0)[0, ids.shape[1]:].tolist()
    cut = next((i + 1 for i, t in enumerate(out) if eos and t in eos), len(out))
    return out[:cut]


@pytest.fixture(scope="module", params=["qwen2", "llama", "gpt2"])
def setup(request, tokenizer):
    """A model whose generation_config lists an eos token that ends some rows early and not others."""
    model = tiny_model(request.param, len(tokenizer))
    free = [reference(model, tokenizer, p, None) for p in PROMPTS]
    # the token that splits the rows most evenly into "stops before the end" and "runs to max_new_tokens"
    def early(t): return sum(t in run[:-1] for run in free)
    token = max(range(2, len(tokenizer)), key=lambda t: min(early(t), len(PROMPTS) - early(t)))
    model.generation_config.eos_token_id = [token, tokenizer.eos_token_id]  # a list, as Qwen2-Instruct ships
    eos = sorted({token, tokenizer.eos_token_id})
    return model, eos, [reference(model, tokenizer, p, eos) for p in PROMPTS]


def run(model, tokenizer, prompts=PROMPTS, **kwargs):
    sampling = kwargs.pop("sampling", SamplingParams(max_new_tokens=MAX_NEW))
    member_ids = kwargs.pop("member_ids", None)
    engine = HFEngine(model, tokenizer, **kwargs)
    return engine.generate(prompts, sampling, member_ids=member_ids), engine


def test_greedy_matches_generate_token_for_token(setup, tokenizer):
    model, eos, refs = setup
    completions, engine = run(model, tokenizer)
    assert engine.eos_ids == eos  # tokenizer eos + the generation_config list
    assert [c.token_ids for c in completions] == refs
    assert [c.finish_reason for c in completions] == ["eos" if r[-1] in eos else "length" for r in refs]
    assert {c.finish_reason for c in completions} == {"eos", "length"}  # both kinds of ending are exercised
    assert [c.text for c in completions] == [tokenizer.decode(r, skip_special_tokens=True) for r in refs]
    assert all(c.num_tokens == len(c.token_ids) for c in completions)
    stats = engine.last_stats
    assert stats.rows == len(PROMPTS) and stats.generated_tokens == sum(map(len, refs))
    assert stats.forward_passes == max(map(len, refs)) and stats.micro_batches == 1
    token_prompts = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    assert [c.token_ids for c in run(model, tokenizer, token_prompts)[0]] == refs
    free_run, _ = run(model, tokenizer, sampling=SamplingParams(max_new_tokens=MAX_NEW, ignore_eos=True))
    assert [c.token_ids for c in free_run] == [reference(model, tokenizer, p, None) for p in PROMPTS]
    assert all(c.finish_reason == "length" for c in free_run)


@pytest.mark.parametrize("sampling", [SamplingParams(max_new_tokens=MAX_NEW),
                                      SamplingParams(max_new_tokens=MAX_NEW, temperature=1.0, top_p=0.9, seed=3)],
                         ids=["greedy", "sampled"])
def test_compaction_and_micro_batching_leave_outputs_unchanged(setup, tokenizer, sampling):
    model, _, _ = setup
    whole, plain = run(model, tokenizer, sampling=sampling, compact_every=10**6)
    compacted, eager = run(model, tokenizer, sampling=sampling, compact_every=1)
    micro, split = run(model, tokenizer, sampling=sampling, max_batch_tokens=2 * (20 + MAX_NEW), compact_every=2)
    one_row, _ = run(model, tokenizer, sampling=sampling, max_batch_rows=1)
    assert compacted == whole and micro == whole and one_row == whole
    if len({c.num_tokens for c in whole}) > 1:  # some row finished early: compaction must have saved row-steps
        assert eager.last_stats.row_steps < plain.last_stats.row_steps
    assert split.last_stats.micro_batches > 1


def test_stop_strings_cut_text_and_set_finish_reason(setup, tokenizer):
    model, eos, refs = setup
    texts = [tokenizer.decode(r, skip_special_tokens=True) for r in refs]
    row = next(i for i, r in enumerate(refs) if r[-1] not in eos and len(texts[i]) >= 8)
    full = texts[row]
    stop = full[4:6]
    sampling = SamplingParams(max_new_tokens=MAX_NEW, stop_strings=(stop, "never-seen"))
    completions, _ = run(model, tokenizer, sampling=sampling)
    got = completions[row]
    assert got.finish_reason == "stop" and got.text == full[:full.index(stop)]
    assert got.token_ids == refs[row][:got.num_tokens] and got.num_tokens < len(refs[row])
    # it stopped on the token that completed the stop string, not later
    assert stop in tokenizer.decode(got.token_ids) and stop not in tokenizer.decode(got.token_ids[:-1])
    for c, r in zip(completions, refs):  # rows that never produce the stop string are untouched
        if stop not in tokenizer.decode(r, skip_special_tokens=True):
            assert c.token_ids == r and c.finish_reason in ("eos", "length")


def test_seeded_sampling_is_reproducible_and_seed_dependent(setup, tokenizer):
    model, _, _ = setup
    def sample(seed):
        params = SamplingParams(max_new_tokens=MAX_NEW, temperature=1.0, top_k=20, top_p=0.95, seed=seed)
        return [c.token_ids for c in run(model, tokenizer, sampling=params)[0]]
    assert sample(1) == sample(1)
    assert sample(1) != sample(2)


def test_sample_tokens_follows_the_distribution_and_respects_top_k_top_p():
    torch.manual_seed(0)
    logits = torch.randn(1, 10, dtype=torch.float64).expand(4000, 10)
    uniforms = (torch.arange(4000, dtype=torch.float64) + 0.5) / 4000  # evenly spread: inverse-CDF is exact
    counts = torch.bincount(sample_tokens(logits, SamplingParams(temperature=1.0), uniforms), minlength=10)
    assert torch.allclose(counts.double() / 4000, logits[0].softmax(-1), atol=1 / 4000)
    top3 = set(logits[0].topk(3).indices.tolist())
    assert set(sample_tokens(logits, SamplingParams(temperature=1.0, top_k=3), uniforms).tolist()) == top3
    nucleus = sample_tokens(logits, SamplingParams(temperature=1.0, top_p=1e-6), uniforms)
    assert (nucleus == logits[0].argmax()).all()  # top_p that small keeps only the most likely token
    assert (sample_tokens(logits, SamplingParams(), None) == logits[0].argmax()).all()


class FakePopulation:
    """Records set_rows calls; `rows` is what a perturbed layer would read at forward time."""

    def __init__(self):
        self.calls: list[list[int] | None] = []
        self.rows: list[int] | None = None

    def set_rows(self, member_ids):
        self.rows = None if member_ids is None else torch.as_tensor(member_ids).tolist()
        self.calls.append(self.rows)


LANE = 8  # member m owns token ids [2 + LANE m, 2 + LANE m + LANE)


def member_script(model, population: FakePopulation, seen: list):
    """Make the model obey the population: member m counts down its own token lane, then emits eos (id 1).

    At prefill member m emits the top of its lane minus m (so members stop at different steps), then each step
    the next lower token; a row fed a token outside its member's lane (a row/member mix-up) emits <pad> forever.
    """
    def hook(module, args, kwargs, output):
        ids = kwargs["input_ids"]
        seen.append((ids.shape[0], population.rows))
        assert population.rows is not None and len(population.rows) == ids.shape[0]
        logits = output.logits[:, -1, :]
        logits.fill_(0.0)
        for b, m in enumerate(population.rows):
            base = 2 + LANE * m
            x = int(ids[b, -1])
            if ids.shape[1] > 1:
                nxt = base + LANE - 1 - m
            else:
                nxt = 1 if x == base else (x - 1 if base < x < base + LANE else 0)
            logits[b, nxt] = 1e4
        return output
    return model.register_forward_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("compact_every,max_batch_tokens", [(1, 10**6), (3, 10**6), (1, 3 * (20 + MAX_NEW))])
def test_population_rows_follow_the_live_rows(tokenizer, compact_every, max_batch_tokens):
    model = tiny_model("qwen2", len(tokenizer))
    members = [3, 0, 4, 1, 2, 0, 3]  # repeated ids: several prompts per member, as in the paper's layout
    population, seen = FakePopulation(), []
    handle = member_script(model, population, seen)
    try:
        prompts = [p if len(p) > 1 else p * 2 for p in PROMPTS]  # prefill must see >1 token (the script's cue)
        completions, engine = run(model, tokenizer, prompts, member_ids=members, population=population,
                                  compact_every=compact_every, max_batch_tokens=max_batch_tokens)
    finally:
        handle.remove()
    for c, m in zip(completions, members):
        base = 2 + LANE * m
        assert c.token_ids == list(range(base + LANE - 1 - m, base - 1, -1)) + [1] and c.finish_reason == "eos"
    assert population.calls[-1] is None and population.rows is None
    if compact_every == 1 and max_batch_tokens == 10**6:
        # one micro-batch compacted after every step: forward k (which makes token k) runs exactly the rows
        # that still had tokens to make, under their own member ids
        for k, (_, rows) in enumerate(seen):
            assert sorted(rows) == sorted(m for c, m in zip(completions, members) if c.num_tokens > k)
    assert engine.last_stats.rows == len(prompts)


def test_population_rows_reset_even_when_the_model_raises(tokenizer):
    model = tiny_model("qwen2", len(tokenizer)).train()
    population, forwards = FakePopulation(), []

    def explode(module, args, kwargs, output):
        forwards.append(1)
        if len(forwards) == 3:
            raise RuntimeError("boom")
    handle = model.register_forward_hook(explode, with_kwargs=True)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            run(model, tokenizer, member_ids=list(range(len(PROMPTS))), population=population)
    finally:
        handle.remove()
    assert sorted(population.calls[0]) == list(range(len(PROMPTS)))  # rows were set before the first forward
    assert population.calls[-1] is None
    assert model.training  # the engine's eval() is undone too


def test_real_population_rows_match_each_member_alone(tokenizer):
    perturbed = pytest.importorskip("eggroll_llm.perturbed")
    model = tiny_model("qwen2", len(tokenizer))
    population = perturbed.Population(population_size=4, sigma=0.5, rank=1, seed=0)
    perturbed.attach_eggroll(model, population)
    members = [0, 1, 2, 3, 0, 1, 2]
    together, _ = run(model, tokenizer, member_ids=members, population=population, compact_every=1)
    alone = [run(model, tokenizer, [p], member_ids=[m], population=population)[0][0]
             for p, m in zip(PROMPTS, members)]
    assert [c.token_ids for c in together] == [c.token_ids for c in alone]
    assert population.rows is None
    first, second = (run(model, tokenizer, PROMPTS[:1], member_ids=[m], population=population)[0][0] for m in (0, 1))
    assert first.token_ids != second.token_ids  # antithetic members really are perturbed differently


def test_plan_micro_batches_covers_every_row_within_budget():
    lengths = [5, 17, 3, 17, 9, 1, 12, 8]
    batches = plan_micro_batches(lengths, 10, max_batch_tokens=60, max_batch_rows=3)
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths)))
    for batch in batches:
        assert len(batch) <= 3 and (len(batch) == 1 or len(batch) * (max(lengths[i] for i in batch) + 10) <= 60)
    assert [lengths[i] for i in flat] == sorted(lengths, reverse=True)  # longest first
    assert plan_micro_batches([50], 10, max_batch_tokens=8) == [[0]]  # an over-budget row still runs, alone


def test_truncate_at_stop_uses_the_earliest_stop():
    assert truncate_at_stop("a #### 5\n\nQ: b", ("Q:", "\n\n")) == ("a #### 5", True)
    assert truncate_at_stop("no stop here", ("Q:",)) == ("no stop here", False)


def test_bad_requests_and_settings_raise(tokenizer):
    model = tiny_model("qwen2", len(tokenizer))
    engine = HFEngine(model, tokenizer)
    sampling = SamplingParams(max_new_tokens=2)
    with pytest.raises(EngineError, match="non-empty list"):
        engine.generate([], sampling)
    with pytest.raises(EngineError, match="all strings or all lists"):
        engine.generate(["a", [3, 4]], sampling)
    with pytest.raises(EngineError, match="no population"):
        engine.generate(["ab"], sampling, member_ids=[0])
    with pytest.raises(EngineError, match="empty after tokenisation"):
        engine.generate(["ab", ""], sampling)
    with pytest.raises(EngineError, match="one member id per prompt"):
        HFEngine(model, tokenizer, population=FakePopulation()).generate(["ab", "cd"], sampling, member_ids=[0])
    for field, bad in [("max_new_tokens", 0), ("temperature", -1.0), ("top_p", 0.0), ("top_p", 1.5),
                       ("top_k", -1), ("stop_strings", "\n"), ("stop_strings", ("",))]:
        with pytest.raises(EngineError, match=field):
            SamplingParams(**{field: bad})
    for field in ("max_batch_tokens", "max_batch_rows", "compact_every"):
        with pytest.raises(EngineError, match=field):
            HFEngine(model, tokenizer, **{field: 0})


def test_get_engine_builds_hf_and_explains_the_others(tokenizer):
    model = tiny_model("qwen2", len(tokenizer))
    assert isinstance(get_engine("hf", model, tokenizer, max_batch_tokens=128), HFEngine)
    with pytest.raises(EngineError, match="unknown engine 'hff'.*did you mean 'hf'"):
        get_engine("hff", model, tokenizer)
