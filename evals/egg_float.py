"""The float32 twin of EGG: the same minGRU byte LM in float32, trained by backprop with Adam, for comparison.

    python evals/egg_float.py --output_dir runs/egg-float --max_wall_s 1200 --hidden 64 --layers 1

Same sizes as `eggroll_llm.egg.model` (embedding, `layers` × [norm, minGRU mixer, residual, norm, MLP, residual],
norm, head), with the float versions of EGG's integer pieces: mean-|x| normalisation, a sigmoid update gate, a GELU
MLP. It reads the same corpus, windows and validation windows as `eggroll-llm egg train` and writes the same
metrics.jsonl keys (val_bits_per_byte, the baselines, wall_s), so evals/egg_plot.py draws both on one axis.
`population_logits` is its batched low-rank population forward, which evals/egg_throughput.py times against EGG's.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from eggroll_llm.egg import corpus


def machine() -> str:
    """The CPU's model name (Linux), for the records of evals/egg_*.py."""
    try:
        with open("/proc/cpuinfo") as info:
            return next(line.split(":", 1)[1].strip() for line in info if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def _norm(x: torch.Tensor) -> torch.Tensor:
    return x / x.abs().mean(-1, keepdim=True).clamp(min=1e-6)


class FloatMinGRU(torch.nn.Module):
    def __init__(self, hidden: int, layers: int, mlp_mult: int):
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.embed = torch.nn.Parameter(torch.randn(256, hidden))
        self.mix = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(2 * hidden, hidden) / hidden ** 0.5)
                                           for _ in range(layers)])
        self.up = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(mlp_mult * hidden, hidden) / hidden ** 0.5)
                                          for _ in range(layers)])
        self.down = torch.nn.ParameterList([torch.nn.Parameter(torch.randn(hidden, mlp_mult * hidden)
                                                               / (mlp_mult * hidden) ** 0.5) for _ in range(layers)])
        self.head = torch.nn.Parameter(torch.zeros(256, hidden))

    def matrices(self) -> dict[str, torch.Tensor]:
        """Same names and order as `EggConfig.shapes()`."""
        out = {"embed": self.embed}
        for i in range(self.layers):
            out.update({f"layers.{i}.mix": self.mix[i], f"layers.{i}.up": self.up[i], f"layers.{i}.down": self.down[i]})
        out["head"] = self.head
        return out

    def forward(self, tokens: torch.Tensor, noise: dict | None = None, sigma: float = 0.0) -> torch.Tensor:
        """Logits (natural units) [N, T, 256]; `noise` = per-row (A [N, m, r], B [N, n, r]) as in EGGROLL."""
        def linear(x, name, w):
            y = x @ w.T
            if noise is not None:  # the same rank-by-rank broadcast as EGG's lowrank_term
                a, b = noise[name]
                xb = torch.bmm(x, b) * sigma                     # [N, T, r]
                for j in range(a.shape[-1]):
                    y = y + xb[..., j:j + 1] * a[:, None, :, j]
            return y

        x = self.embed[tokens]
        if noise is not None:
            a, b = noise["embed"]
            rows = torch.gather(a, 1, tokens.unsqueeze(-1).expand(-1, -1, a.shape[-1]))
            x = x + sigma * torch.bmm(rows, b.transpose(1, 2))
        keep = (tokens != 0).to(x.dtype)
        for i in range(self.layers):
            g = linear(_norm(x), f"layers.{i}.mix", self.mix[i])
            z, c = torch.sigmoid(g[..., :self.hidden]), g[..., self.hidden:]
            h, states = torch.zeros_like(c[:, 0]), []
            for t in range(c.shape[1]):  # minGRU: h_t = (1 - z_t) h_{t-1} + z_t c_t, reset at a separator
                h = h * keep[:, t, None]
                h = h + z[:, t] * (c[:, t] - h)
                states.append(h)
            x = x + torch.stack(states, 1)
            x = x + linear(F.gelu(linear(_norm(x), f"layers.{i}.up", self.up[i])), f"layers.{i}.down", self.down[i])
        return linear(_norm(x), "head", self.head)


def val_bits_per_byte(model: FloatMinGRU, windows: torch.Tensor) -> float:
    with torch.no_grad():
        logits = model(windows[:, :-1])
        return float(F.cross_entropy(logits.reshape(-1, 256), windows[:, 1:].reshape(-1)) / math.log(2))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--data", default=None, help="text file or folder; default: the Python stdlib")
    p.add_argument("--max_wall_s", type=float, default=600.0)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--mlp_mult", type=int, default=2)
    p.add_argument("--batch_size", type=int, default=32, help="windows per Adam step")
    p.add_argument("--seq_len", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval_every_s", type=float, default=30.0)
    p.add_argument("--val_windows", type=int, default=32)
    p.add_argument("--val_seq_len", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.manual_seed(args.seed)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = corpus.load_corpus(args.data)
    val = torch.from_numpy(corpus.val_windows(text, args.val_windows, args.val_seq_len)).long()
    baselines = corpus.baselines(text.train, val.numpy())
    model = FloatMinGRU(args.hidden, args.layers, args.mlp_mult)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    (out / "config.json").write_text(json.dumps(vars(args), indent=2))
    with (out / "metrics.jsonl").open("w") as log:
        def record(step, wall_s, **extra):
            log.write(json.dumps({"step": step, "wall_s": wall_s, "val_bits_per_byte": val_bits_per_byte(model, val),
                                  **baselines, **extra}) + "\n")
            log.flush()

        record(0, 0.0)
        step, wall_s, next_eval = 0, 0.0, args.eval_every_s
        while wall_s < args.max_wall_s:
            started = time.perf_counter()
            step += 1
            batch = torch.from_numpy(corpus.train_windows(text, args.seed, step, args.batch_size, args.seq_len)).long()
            loss = F.cross_entropy(model(batch[:, :-1]).reshape(-1, 256), batch[:, 1:].reshape(-1))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            wall_s += time.perf_counter() - started
            if wall_s >= next_eval or wall_s >= args.max_wall_s:
                started = time.perf_counter()
                record(step, wall_s, train_bits_per_byte=float(loss.detach()) / math.log(2))
                wall_s += time.perf_counter() - started
                next_eval += args.eval_every_s
    print(f"float minGRU: {step} Adam steps in {wall_s:.0f} s -> {out / 'metrics.jsonl'}")


if __name__ == "__main__":
    main()
