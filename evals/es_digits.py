"""Handwritten digits with ES and with backprop: EGGROLL, OpenAI-ES and Adam on a small CNN and an MLP.

    pip install -e ".[evals]"                     # scikit-learn, for its bundled digits (nothing is downloaded)
    python evals/es_digits.py --json evals/results/es_digits.json --plot evals/results/es_digits.png

scikit-learn's 8×8 digits (1797 images, 10 classes; a fixed 1297 / 500 train / test split). Both networks train from
the same initial weights with every method:

- EGGROLL (eggroll_llm.es.EggrollES, rank-r noise on matrices and conv kernels, dense on biases) and OpenAI-ES
  (eggroll_llm.openai_es.OpenAIES, dense noise everywhere), in place, population N, fitness −cross-entropy on a
  minibatch every member shares, scored in ONE batched forward per step: the MLP with one row per member holding
  the minibatch (x: [N, B, 64], a stride-0 expand), the CNN in the flat member-major layout (x: [N·B, 1, 8, 8]);
- Adam (torch.optim.Adam, backprop) on minibatches of the same size.

Recorded per method: held-out accuracy against wall-clock seconds (training only, evaluation excluded) and against
sample forward passes (ES: N·B per step; Adam: B per step, whose backward costs about two more). One torch thread.
"""

from __future__ import annotations

import argparse
import json
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


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    # ES
    p.add_argument("--population", type=int, default=64, help="ES population size N (even: antithetic pairs)")
    p.add_argument("--rank", type=int, default=4, help="EGGROLL noise rank r")
    p.add_argument("--sigma", type=float, default=0.03, help="ES noise scale σ")
    p.add_argument("--es-lr", type=float, default=0.1, help="ES learning rate")
    p.add_argument("--es-steps", type=int, default=400, help="ES steps per method and network")
    # Adam
    p.add_argument("--adam-lr", type=float, default=3e-3, help="Adam learning rate")
    p.add_argument("--adam-steps", type=int, default=400, help="Adam steps per network")
    # Shared
    p.add_argument("--batch", type=int, default=128, help="training samples per step (every ES member scores them)")
    p.add_argument("--eval-every", type=int, default=20, help="steps between held-out evaluations")
    p.add_argument("--seed", type=int, default=0, help="seeds the split, the initial weights, the batches and noise")
    p.add_argument("--json", type=Path, default=None, help="write config, machine and curves here")
    p.add_argument("--plot", type=Path, default=None, help="write the accuracy figure here (PNG)")
    return p.parse_args(argv)


def digits(seed: int) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
    """((X_train [1297, 1, 8, 8], y_train), (X_test [500, 1, 8, 8], y_test)); pixels scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    data = load_digits()
    X = torch.tensor(data.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(data.target, dtype=torch.long)
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    train, test = order[:1297], order[1297:]
    return (X[train], y[train]), (X[test], y[test])


def network(kind: str, seed: int) -> nn.Module:
    with torch.random.fork_rng():  # PyTorch's default init, reproducibly, without touching the global RNG
        torch.manual_seed(seed)
        if kind == "mlp":  # takes [..., 64]
            return nn.Sequential(nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 10))
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                             nn.ReLU(), nn.Flatten(), nn.Linear(16 * 4 * 4, 10))   # [b, 1, 8, 8] -> [b, 10]


def inputs(kind: str, X: torch.Tensor) -> torch.Tensor:
    return X.flatten(1) if kind == "mlp" else X


def accuracy(model: nn.Module, kind: str, X: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(inputs(kind, X)).argmax(-1) == y).float().mean())


def scorer(kind: str, X: torch.Tensor, y: torch.Tensor, N: int):
    """score_population for one minibatch: −cross-entropy of every member from one batched forward → [N]."""
    B = X.shape[0]

    def score_population(model: nn.Module, population) -> torch.Tensor:
        if kind == "mlp":  # one row per member, the shared minibatch along the sequence axis
            population.set_rows(torch.arange(N))
            logits = model(inputs(kind, X).expand(N, -1, -1))                       # [N, B, 10]
        else:              # the flat member-major layout a conv net needs: rows [0]*B + [1]*B + ...
            population.set_rows(population_rows(population, B))
            logits = model(X.repeat(N, 1, 1, 1)).view(N, B, -1)                     # [N, B, 10]
        loss = F.cross_entropy(logits.transpose(1, 2), y.expand(N, -1), reduction="none").mean(dim=1)
        return -loss
    return score_population


def train(method: str, kind: str, args: argparse.Namespace, train_set, test_set) -> dict:
    model = network(kind, args.seed)
    (X, y), generator = train_set, torch.Generator().manual_seed(args.seed + 1)
    steps = args.adam_steps if method == "adam" else args.es_steps
    if method == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=args.adam_lr)
    else:
        factory = OpenAIES if method == "openai-es" else lambda m, **kw: EggrollES(m, rank=args.rank, **kw)
        es = factory(model, population_size=args.population, sigma=args.sigma, lr=args.es_lr, seed=args.seed)
    per_step = args.batch * (1 if method == "adam" else args.population)
    curve, seconds = [(0, 0.0, 0, accuracy(model, kind, *test_set))], 0.0
    for step in range(1, steps + 1):
        batch = torch.randint(0, len(y), (args.batch,), generator=generator)
        start = time.perf_counter()
        if method == "adam":
            loss = F.cross_entropy(model(inputs(kind, X[batch])), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        else:
            es.tell(es.evaluate(scorer(kind, X[batch], y[batch], args.population)))
        seconds += time.perf_counter() - start
        if step % args.eval_every == 0 or step == steps:
            curve.append((step, round(seconds, 4), step * per_step, accuracy(model, kind, *test_set)))
    print(f"{kind:3s} {method:9s} accuracy {curve[0][3]:.3f} -> {curve[-1][3]:.3f} in {seconds:.1f} s "
          f"({1e3 * seconds / steps:.1f} ms/step)", flush=True)
    return {"method": method, "network": kind, "parameters": sum(p.numel() for p in model.parameters()),
            "final_accuracy": curve[-1][3], "s_per_step": seconds / steps,
            "curve": [dict(zip(("step", "train_s", "sample_forwards", "test_accuracy"), c)) for c in curve]}


def plot(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(10, 7), sharey=True)
    colours = {"eggroll": "tab:orange", "openai-es": "tab:blue", "adam": "tab:green"}
    for row, kind in enumerate(("cnn", "mlp")):
        for r in (r for r in results if r["network"] == kind):
            c = r["curve"]
            for col, key in enumerate(("train_s", "sample_forwards")):  # log axes: the untrained point is left out
                points = [p for p in c if p[key] > 0]
                axes[row, col].plot([p[key] for p in points], [p["test_accuracy"] for p in points], marker=".",
                                    label=r["method"], color=colours[r["method"]])
                axes[row, col].set_xscale("log")
        axes[row, 0].set_ylabel(f"{kind.upper()}: test accuracy")
    axes[1, 0].set_xlabel("training wall-clock (s, one CPU thread)")
    axes[1, 1].set_xlabel("sample forward passes (Adam: + backward)")
    axes[0, 0].legend()
    fig.suptitle("scikit-learn digits: EGGROLL vs OpenAI-ES vs Adam")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(1)
    train_set, test_set = digits(args.seed)
    results = [train(method, kind, args, train_set, test_set)
               for kind in ("cnn", "mlp") for method in ("eggroll", "openai-es", "adam")]
    if args.plot is not None:
        plot(results, args.plot)
        print(f"wrote {args.plot}")
    if args.json is not None:
        machine = {"processor": platform.processor() or platform.machine(), "platform": platform.platform(),
                   "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                   "torch": torch.__version__, "python": platform.python_version()}
        config = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "config": config,
                                         "machine": machine, "results": results}, indent=1) + "\n")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
