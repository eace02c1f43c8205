"""EGGROLL vs full-rank OpenAI-ES on a small classifier: final accuracy, seconds per step, noise memory per step.

    python evals/es_classifier.py [--steps 100] [--json OUT.json]

Every method trains the same MLP (2 → hidden → hidden → 2, default hidden 512) on two noisy concentric rings, from
the same initial weights, with the same population, σ, lr, noise keys and fitness (centred ranks of −cross-entropy,
Salimans et al. 2017), each scoring its whole population in one batched forward (one batch row per member, its
samples along the sequence axis). They differ only in the member noise and where the update goes: EGGROLL's rank-r
A_k B_kᵀ on the weight matrices (dense on the biases) folded into the parameters in place, the same noise folded
into a rank-R adapter on the weights only (the LLM trainer's mode), or OpenAI-ES's dense E_k on every parameter, in
place. The hidden width is what separates them: per weight matrix and step the noise is N/2·(m+n)·r values for
EGGROLL and N/2·m·n for OpenAI-ES, and the forward adds two thin bmm's instead of a full one.

Noise memory is computed from the parameter shapes (fp32 draw per step, and its per-row gathered copy in the
forward), not measured. Timings use `--threads` torch threads (default 1: the reference machine's 2 cores are
shared, and oversubscribed threads make timings meaningless); the whole script runs in about a minute on one core.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from eggroll_llm.es import EggrollES, population_rows
from eggroll_llm.openai_es import OpenAIES
from eggroll_llm.strategy import LowRankNoise


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # Task
    p.add_argument("--hidden", type=int, default=512, help="width of the two hidden layers")
    p.add_argument("--batch", type=int, default=256, help="training samples every member is scored on, each step")
    p.add_argument("--test-size", type=int, default=2048, help="held-out samples for the reported accuracy")
    # ES
    p.add_argument("--steps", type=int, default=100, help="ES steps per method")
    p.add_argument("--population", type=int, default=32, help="population size N (even: antithetic pairs)")
    p.add_argument("--sigma", type=float, default=0.02, help="noise scale σ, same for both methods")
    p.add_argument("--lr", type=float, default=0.25, help="learning rate, same for both methods")
    p.add_argument("--rank", type=int, default=1, help="EGGROLL noise rank r")
    p.add_argument("--adapter-rank", type=int, default=16, help="rank R of the adapter-mode EGGROLL run")
    p.add_argument("--seed", type=int, default=0, help="seeds the data, the initial weights and the noise keys")
    # Output
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for the timings")
    p.add_argument("--json", type=Path, default=None, help="also write config, machine and results to this file")
    return p.parse_args(argv)


def circles(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Two noisy concentric rings (radius 1: class 0, radius 2: class 1): X [n, 2], y [n]; not linearly separable."""
    y = torch.randint(0, 2, (n,), generator=generator)
    radius = 1.0 + y.float() + 0.25 * torch.randn(n, generator=generator)
    angle = 2 * math.pi * torch.rand(n, generator=generator)
    return torch.stack([radius * angle.cos(), radius * angle.sin()], dim=1), y


def classifier(hidden: int, seed: int) -> nn.Sequential:
    with torch.random.fork_rng():  # PyTorch's default init, reproducibly, without touching the global RNG
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(2, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                             nn.Linear(hidden, 2))


def scorer(X: torch.Tensor, y: torch.Tensor):
    """score_population: one forward with x [N, B, 2] (row i = member i), −cross-entropy of each member → [N]."""
    def score_population(model: nn.Module, population) -> torch.Tensor:
        N = population.population_size
        population.set_rows(population_rows(population, 1))
        logits = model(X.expand(N, -1, -1))                                          # [N, B, 2]
        loss = F.cross_entropy(logits.transpose(1, 2), y.expand(N, -1), reduction="none").mean(dim=1)
        return -loss
    return score_population


def accuracy(model: nn.Module, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(X).argmax(-1) == y).float().mean())


def noise_bytes(es: EggrollES) -> tuple[int, int]:
    """fp32 bytes of (the step's noise draw, its per-row gathered copy in the forward), summed over the targets."""
    pop, rows = es.population, es.population.population_size  # one row per member in this script's forward
    if es.layers:  # adapter mode: rank-r factors of every wrapped weight
        shapes = [(layer.out_features + layer.in_features) * pop.rank for layer in es.layers.values()]
    else:
        es.ask()
        shapes = [sum(f[0].numel() for f in noise) if isinstance(noise, LowRankNoise) else noise.E[0].numel()
                  for noise in (es.population.noise(t) for t in es.targets.values())]
    return 4 * pop.num_pairs * sum(shapes), 4 * rows * sum(shapes)


def train(method: str, es_factory, args: argparse.Namespace, train_set, test_set) -> dict:
    model = classifier(args.hidden, args.seed)
    start = accuracy(model, *test_set)
    es = es_factory(model, population_size=args.population, sigma=args.sigma, lr=args.lr, seed=args.seed,
                    fitness="centered_rank")
    score = scorer(*train_set)
    eval_s, update_s = [], []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        scores = es.evaluate(score)
        t1 = time.perf_counter()
        es.tell(scores)  # centred ranks (OpenAI-ES shaping), then the fold
        eval_s.append(t1 - t0)
        update_s.append(time.perf_counter() - t1)
    timed = slice(1, None) if args.steps > 1 else slice(None)  # step 0 pays one-off allocations
    draw, gathered = noise_bytes(es)
    return {"method": method, "start_accuracy": start, "final_accuracy": accuracy(model, *test_set),
            "s_per_step": sum(eval_s[timed] + update_s[timed]) / len(eval_s[timed]),
            "eval_s_per_step": sum(eval_s[timed]) / len(eval_s[timed]),
            "update_s_per_step": sum(update_s[timed]) / len(update_s[timed]),
            "noise_bytes_per_step": draw, "gathered_noise_bytes": gathered}


def table(results: list[dict]) -> str:
    head = "| method | accuracy (start → final) | s/step | eval s | update s | noise / step | gathered noise |"
    lines = [head, "|---" * (head.count("|") - 1) + "|"]
    for r in results:
        lines.append(f"| {r['method']} | {r['start_accuracy']:.3f} → {r['final_accuracy']:.3f} | "
                     f"{r['s_per_step']:.4f} | {r['eval_s_per_step']:.4f} | {r['update_s_per_step']:.4f} | "
                     f"{r['noise_bytes_per_step'] / 2**20:.3f} MiB | {r['gathered_noise_bytes'] / 2**20:.3f} MiB |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(args.seed)
    train_set, test_set = circles(args.batch, generator), circles(args.test_size, generator)
    methods = {
        f"eggroll r={args.rank} in place": lambda model, **kw: EggrollES(model, rank=args.rank, **kw),
        f"eggroll r={args.rank} adapter R={args.adapter_rank}":
            lambda model, **kw: EggrollES(model, rank=args.rank, adapter_rank=args.adapter_rank, **kw),
        "openai-es in place": lambda model, **kw: OpenAIES(model, **kw),
    }
    results = [train(name, factory, args, train_set, test_set) for name, factory in methods.items()]
    print(f"N={args.population}, hidden={args.hidden}, batch={args.batch}, steps={args.steps}, "
          f"σ={args.sigma}, lr={args.lr}, threads={args.threads}; accuracy on {args.test_size} held-out samples")
    print(table(results))
    if args.json is not None:
        machine = {"processor": platform.processor() or platform.machine(), "platform": platform.platform(),
                   "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                   "torch": torch.__version__, "python": platform.python_version()}
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "config": config,
                                         "machine": machine, "results": results}, indent=2) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
