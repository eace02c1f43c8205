"""`eggroll-llm bench`: throughput and memory figures for the generation engine and the ES fold.

docs/design.md §2 targets: perturbed population generation ≥ 0.9× the tokens/s of plain batched generation of the same
shape (the paper reports 91%), and far ahead of evaluating members one by one. `bench engine` measures
    (a) plain      — the unperturbed model generating all rows in one batched decode,
    (b) perturbed  — the same rows, each under its member's low-rank perturbation (plus a non-zero adapter),
    (c) naive      — each member's weights materialised into the model and its rows generated alone, in turn,
with the ratios b/a and b/c. (a) and (b) run interleaved, a b a b …, after one warm-up each, so a busy machine slows
both alike; b/a is the median of the per-round ratios (on CPU also from process time, `b_over_a_cpu`). The default
layout is the paper's: each member answers its own prompt(s), members grouped per prompt (antithetic partners share
prompts); it is printed next to every figure. `bench fold` times one ES update (regenerate every layer's noise, fold
it into every adapter) interleaved with the perturbed generation of the same layout, so the fold's share of a
training step is read off one line. `--engine vllm` measures (a) and (b) on vLLM instead — (a) the plain model
without LoRA, (b) every row under its member's LoRA adapter, with the seconds spent writing the adapters per call —
each in its own vLLM instance, started and stopped in turn; the peak memory of vLLM's worker processes is not this
process's and is not reported.

    eggroll-llm bench engine --model tiny-arith
    eggroll-llm bench engine --model tiny-arith --engine vllm --skip-naive
    eggroll-llm bench engine --arch qwen2-100m --members 32 --new-tokens 64
    eggroll-llm bench fold --members 4096 --members-per-prompt 16 --new-tokens 32 --prompt-len 48
    eggroll-llm bench fold --arch qwen2-100m --members 4096 --skip-generation
"""

from __future__ import annotations

import argparse
import copy
import json
import re
import statistics
import time
from pathlib import Path
from typing import Callable

from .models import ARCHS, default_device
from .runlog import peak_memory_mb


def build_bench_model(model: str | None, arch: str | None, dtype: str, device: str, seed: int):
    """(model, tokenizer, description). Random-init archs reuse the tiny tokenizer: prompts are token ids."""
    import torch
    from transformers import AutoModelForCausalLM

    from .models import arch_config, load_model, load_tokenizer

    if arch is None:
        name = model or "tiny-arith"
        return load_model(name, dtype=dtype, device=device), load_tokenizer(name), name
    if arch not in ARCHS:
        raise ValueError(f"unknown --arch {arch!r}; choose one of {', '.join(ARCHS)}")
    torch.manual_seed(seed)  # the bench's own random init
    net = AutoModelForCausalLM.from_config(arch_config(arch))
    net = net.to(dtype=getattr(torch, dtype), device=device).eval().requires_grad_(False)
    params = sum(p.numel() for p in net.parameters()) / 1e6
    return net, load_tokenizer("tiny-arith"), f"{arch} (random init, {params:.0f}M params)"


def _sync(device) -> None:
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def _reset_peak(device) -> None:
    """Start a fresh peak-memory window: CUDA's allocator peak, or on Linux the process's peak RSS (VmHWM)."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        Path("/proc/self/clear_refs").write_text("5")  # proc(5): "5" resets the peak resident set size
    except OSError:
        pass  # not Linux: the peak stays the process's peak so far


def _peak_mb(device) -> float:
    """Peak memory since `_reset_peak`: CUDA allocated bytes, or VmHWM on Linux, else the process's peak RSS."""
    import torch

    status = Path("/proc/self/status")
    if torch.device(device).type == "cpu" and status.is_file():
        match = re.search(r"^VmHWM:\s+(\d+) kB", status.read_text(), re.MULTILINE)
        if match:
            return int(match.group(1)) / 1024
    return peak_memory_mb(device)


def _timed(fns: dict[str, Callable[[], object]], repeats: int, device, warm_up: bool = True) -> dict[str, dict]:
    """Per function: median seconds over `repeats` rounds, every round's seconds, and peak memory (MB).

    Rounds interleave the functions (a b a b …) so load from other processes lands on all of them alike. On CPU
    each round's process time (user + system, all threads) is kept too: other processes' load barely moves it,
    where it can double wall-clock on a shared machine. Peak memory is each function's own, measured over its
    warm-up (over its first round without one).
    """
    peaks: dict[str, float] = {}
    if warm_up:
        for name, fn in fns.items():
            _reset_peak(device)
            fn()
            _sync(device)
            peaks[name] = _peak_mb(device)
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu_times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            if name not in peaks:
                _reset_peak(device)
            start, cpu_start = time.perf_counter(), time.process_time()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
            cpu_times[name].append(time.process_time() - cpu_start)
            peaks.setdefault(name, _peak_mb(device))
    on_cpu = _is_cpu(device)
    return {name: {"seconds": statistics.median(times[name]), "seconds_all": times[name],
                   **({"cpu_seconds": statistics.median(cpu_times[name]), "cpu_seconds_all": cpu_times[name]}
                      if on_cpu else {}),
                   "peak_mem_mb": peaks[name]} for name in fns}


def _is_cpu(device) -> bool:
    import torch

    return torch.device(device).type == "cpu"


def _ratio(numerator: dict, denominator: dict, key: str = "seconds_all") -> float:
    """Median over rounds of numerator seconds / denominator seconds (round i of one against round i of the other)."""
    return statistics.median(a / b for a, b in zip(numerator[key], denominator[key]))


def _ratios(figures: dict, name: str, numerator: dict, denominator: dict) -> None:
    """figures[name] from wall-clock rounds, and figures[name + "_cpu"] from process-time rounds on CPU."""
    figures[name] = _ratio(numerator, denominator)
    if "cpu_seconds_all" in numerator:
        figures[name + "_cpu"] = _ratio(numerator, denominator, "cpu_seconds_all")


def bench_layout(args, model) -> tuple[list[list[int]], list[int], dict]:
    """(prompt token ids per row, member id per row, layout figures): the trainer's row layout, random prompts."""
    import torch

    from .es import population_layout

    members, slots = population_layout(args.members, args.members_per_prompt, args.prompts_per_member)
    gen = torch.Generator().manual_seed(args.seed)
    vocab = model.get_input_embeddings().num_embeddings
    prompts_by_slot = torch.randint(10, vocab, (int(slots.max()) + 1, args.prompt_len), generator=gen)
    prompts = [prompts_by_slot[s].tolist() for s in slots.tolist()]
    layout = {"members": args.members, "members_per_prompt": args.members_per_prompt,
              "prompts_per_member": args.prompts_per_member, "rows": len(prompts),
              "distinct_prompts": prompts_by_slot.shape[0], "prompt_len": args.prompt_len,
              "new_tokens": args.new_tokens}
    return prompts, members.tolist(), layout


def fill_adapters(layers, seed: int) -> None:
    """A trained-looking non-zero adapter, so perturbed generation pays for it as a real run does."""
    import torch

    gen = torch.Generator().manual_seed(seed + 1)
    for layer in layers.values():
        if layer.adapter_rank != "full":
            layer.lora_U.copy_(1e-3 * torch.randn(layer.lora_U.shape, generator=gen))
            layer.lora_V.copy_(torch.randn(layer.lora_V.shape, generator=gen))


def bench_engine(args) -> dict:
    import torch

    from .engine import SamplingParams
    from .engine.hf import HFEngine
    from .es import EggrollES

    device = default_device(args.device)
    model, tokenizer, described = build_bench_model(args.model, args.arch, args.dtype, device, args.seed)
    plain_model = copy.deepcopy(model)
    prompts, member_ids, layout = bench_layout(args, model)
    sampling = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True)

    es = EggrollES(model, population_size=args.members, sigma=args.sigma, lr=1e-3, rank=args.rank,
                   adapter_rank=args.adapter_rank, seed=args.seed)
    population, layers = es.ask(), es.layers
    fill_adapters(layers, args.seed)
    plain = HFEngine(plain_model, tokenizer, max_batch_tokens=args.max_batch_tokens)
    perturbed = HFEngine(model, tokenizer, population=population, max_batch_tokens=args.max_batch_tokens)
    tokens = len(prompts) * args.new_tokens
    figures = {"model": described, "engine": args.engine, "device": device, "dtype": args.dtype,
               "threads": torch.get_num_threads(), "layout": layout, "rank": args.rank,
               "adapter_rank": args.adapter_rank, "repeats": args.repeats}

    if args.engine == "vllm":
        return {**figures, **_bench_vllm(args, plain_model, model, tokenizer, population, prompts, member_ids,
                                         sampling, tokens, device)}
    timed = _timed({"plain": lambda: plain.generate(prompts, sampling),
                    "perturbed": lambda: perturbed.generate(prompts, sampling, member_ids=member_ids)},
                   args.repeats, device)
    for key, t in timed.items():
        figures[key] = {"tokens_per_s": tokens / t["seconds"], **t}
    _ratios(figures, "b_over_a", timed["plain"], timed["perturbed"])
    if not args.skip_naive:  # minutes at large N: one run, the engine already warm from (a)
        naive = _timed({"naive": lambda: _naive(plain_model, plain, layers, population, prompts, member_ids,
                                                sampling)}, 1, device, warm_up=False)["naive"]
        figures["naive"] = {"tokens_per_s": tokens / naive["seconds"], **naive}
        figures["b_over_c"] = naive["seconds"] / figures["perturbed"]["seconds"]
    return figures


def _bench_vllm(args, plain_model, model, tokenizer, population, prompts, member_ids, sampling, tokens,
                device) -> dict:
    """(a) and (b) on vLLM, each engine started, timed and stopped before the next one starts (one at a time in
    memory). A random-init model is saved to a temporary folder first: vLLM loads weights from disk."""
    import tempfile

    from .engine.vllm import VLLMEngine

    with tempfile.TemporaryDirectory(prefix="eggroll-bench-") as folder:
        source = getattr(plain_model, "name_or_path", "") or None
        if source is None:
            plain_model.save_pretrained(folder)
            tokenizer.save_pretrained(folder)
            source = folder
        plain = VLLMEngine(plain_model, tokenizer, model_path=source, seed=args.seed)
        try:
            s_a = _timed({"a": lambda: plain.generate(prompts, sampling)}, args.repeats, device)["a"]["seconds"]
        finally:
            plain.close()
        perturbed = VLLMEngine(model, tokenizer, population=population, model_path=source, seed=args.seed)
        try:
            s_b = _timed({"b": lambda: perturbed.generate(prompts, sampling, member_ids=member_ids)}, args.repeats,
                         device)["b"]["seconds"]
            adapter_s = perturbed.last_adapter_s
        finally:
            perturbed.close()
    return {"plain": {"tokens_per_s": tokens / s_a, "seconds": s_a, "peak_mem_mb": None},
            "perturbed": {"tokens_per_s": tokens / s_b, "seconds": s_b, "peak_mem_mb": None,
                          "adapter_write_s": adapter_s, "lora_rank": perturbed.rank},
            "b_over_a": s_a / s_b}


def _naive(plain_model, engine, layers, population, prompts, members: list[int], sampling) -> None:
    """Members one after another: W_i = W + ΔW + s_i σ ε_i written into the weights (the ES core's member write),
    generate, restore."""
    from .es import write_member
    from .strategy import Target

    modules = dict(plain_model.named_modules())
    originals = {name: modules[name].weight.detach().clone() for name in layers}
    writes = [(Target(name, layer.layer_index, modules[name].weight, layer.target.matrix, layer.target.scale),
               originals[name].float() + layer.delta_weight(), population.noise(layer.target))
              for name, layer in layers.items()]
    for member in range(population.population_size):
        rows = [p for p, m in zip(prompts, members) if m == member]
        pair, sign = int(population.pairs[member]), float(population.signs[member])
        for target, centre, noise in writes:
            write_member(target, centre, noise, pair, sign * population.sigma * target.scale)
        engine.generate(rows, sampling)
    for name, weight in originals.items():
        modules[name].weight.copy_(weight)


def bench_fold(args) -> dict:
    """Seconds per ES update (regenerate noise + fold into every adapter) and, unless --skip-generation, seconds of
    the perturbed generation of the same layout: the two parts of one training step, timed interleaved."""
    import torch

    from .engine import SamplingParams
    from .engine.hf import HFEngine
    from .es import EggrollES

    device = default_device(args.device)
    model, tokenizer, described = build_bench_model(args.model, args.arch, args.dtype, device, args.seed)
    es = EggrollES(model, population_size=args.members, sigma=args.sigma, lr=1e-3, rank=args.rank,
                   adapter_rank=args.adapter_rank, seed=args.seed, fitness="none")
    fill_adapters(es.layers, args.seed)
    fitness = torch.randn(args.members, generator=torch.Generator().manual_seed(args.seed))

    def fold() -> None:  # each call is the next step's: its noise is drawn afresh, as in training
        es.ask()
        es.tell(fitness)

    fns = {"fold": fold}
    figures = {"model": described, "device": device, "dtype": args.dtype, "threads": torch.get_num_threads(),
               "members": args.members, "rank": args.rank, "adapter_rank": args.adapter_rank,
               "layers": len(es.layers), "repeats": args.repeats}
    if not args.skip_generation:
        prompts, member_ids, figures["layout"] = bench_layout(args, model)
        engine = HFEngine(model, tokenizer, population=es.population, max_batch_tokens=args.max_batch_tokens)
        sampling = SamplingParams(max_new_tokens=args.new_tokens, ignore_eos=True)

        def generation() -> None:  # the next step's rows under its freshly drawn noise
            es.ask()
            engine.generate(prompts, sampling, member_ids=member_ids)

        fns["generation"] = generation
    timed = _timed(fns, args.repeats, device)
    figures.update(fold_s_per_step=timed["fold"]["seconds"], fold=timed["fold"],
                   peak_mem_mb=timed["fold"]["peak_mem_mb"])
    if "generation" in timed:
        figures.update(generation_s_per_step=timed["generation"]["seconds"], generation=timed["generation"])
        _ratios(figures, "fold_over_generation", timed["fold"], timed["generation"])
    return figures


def add_bench_parser(subparsers) -> None:
    p = subparsers.add_parser("bench", help="throughput/memory benchmarks (engine, fold)", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=["engine", "fold"], help="engine: generation a/b/c; fold: ES update time")
    p.add_argument("--model", help="model to load (default tiny-arith); ignored with --arch")
    p.add_argument("--arch", help=f"random-init architecture instead: {', '.join(ARCHS)}")
    p.add_argument("--engine", choices=["hf", "vllm"], default="hf",
                   help="generation backend to measure; vllm: (a) and (b) only, members as LoRA adapters")
    p.add_argument("--members", type=int, default=32, help="population size N")
    p.add_argument("--members-per-prompt", type=int, default=2, help="members sharing prompts (antithetic pairs: 2)")
    p.add_argument("--prompts-per-member", type=int, default=1, help="prompts each member answers")
    p.add_argument("--prompt-len", type=int, default=64, help="prompt tokens per row")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens generated per row (EOS ignored)")
    p.add_argument("--sigma", type=float, default=1e-3)
    p.add_argument("--rank", type=int, default=1, help="perturbation rank r")
    p.add_argument("--adapter-rank", type=lambda v: v if v == "full" else int(v), default=8)
    p.add_argument("--max-batch-tokens", type=int, default=1 << 20, help="engine micro-batch budget")
    p.add_argument("--repeats", type=int, default=3, help="timed runs after a warm-up (median reported)")
    p.add_argument("--skip-naive", action="store_true", help="skip (c), the slow member-by-member baseline")
    p.add_argument("--skip-generation", action="store_true",
                   help="fold: time the ES update alone, not the generation of the same layout")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--device")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run_bench)


def run_bench(args) -> int:
    if args.members < 1 or args.repeats < 1 or args.new_tokens < 1 or args.prompt_len < 1:
        raise ValueError("--members, --repeats, --new-tokens and --prompt-len must be >= 1")
    if args.engine == "vllm" and args.what == "engine" and not args.skip_naive:
        raise ValueError("--engine vllm measures (a) and (b) only; pass --skip-naive (the naive baseline is the hf "
                         "engine's)")
    figures = bench_engine(args) if args.what == "engine" else bench_fold(args)
    if args.json:
        print(json.dumps(figures))
        return 0
    if args.what == "fold":
        line = (f"fold: {figures['fold_s_per_step'] * 1e3:.1f} ms/step  ({figures['model']}, N={args.members}, "
                f"r={args.rank}, adapter rank {args.adapter_rank}, {figures['layers']} layers, {figures['device']})")
        if "generation" in figures:
            layout = figures["layout"]
            line += (f"\ngeneration of the same step: {figures['generation_s_per_step']:.3f} s ({layout['rows']} rows, "
                     f"prompt {layout['prompt_len']} + {layout['new_tokens']} new tokens)  fold/generation = "
                     f"{figures['fold_over_generation']:.3f}")
        print(line)
        return 0
    layout = figures["layout"]
    print(f"{figures['model']} on {figures['device']} ({figures['dtype']}, {figures['threads']} threads, "
          f"{figures['engine']} engine)")
    print(f"layout: {layout['members']} members x {layout['prompts_per_member']} prompt(s) each, "
          f"{layout['members_per_prompt']} members per prompt -> {layout['rows']} rows, "
          f"prompt {layout['prompt_len']} + {layout['new_tokens']} new tokens")
    for key in ("plain", "perturbed", "naive"):
        if key in figures:
            f = figures[key]
            memory = "n/a (vLLM's processes)" if f["peak_mem_mb"] is None else f"{f['peak_mem_mb']:.0f} MB"
            adapters = f"  adapters written in {f['adapter_write_s']:.3f} s" if "adapter_write_s" in f else ""
            print(f"  ({'abc'[['plain', 'perturbed', 'naive'].index(key)]}) {key:9} {f['tokens_per_s']:10.1f} tok/s"
                  f"  {f['seconds']:.3f} s  peak {memory}{adapters}")
    ratio_c = f"   b/c = {figures['b_over_c']:.2f}" if "b_over_c" in figures else ""
    ratio_cpu = f"  (process time: {figures['b_over_a_cpu']:.3f})" if "b_over_a_cpu" in figures else ""
    print(f"  b/a = {figures['b_over_a']:.3f}{ratio_cpu}{ratio_c}")
    return 0
