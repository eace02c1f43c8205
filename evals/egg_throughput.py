"""Member-tokens/s of EGG's int8 population forward against the float32 population forward of the same model.

    OMP_NUM_THREADS=1 python evals/egg_throughput.py --out evals/results/egg/throughput.json

Both score a whole population on its text windows in one batched forward, each member with its own rank-1
perturbation (EGGROLL's low-rank term, never a materialised matrix), fitness included: EGG's integer
log2-likelihood, and float32 cross-entropy for the twin (evals/egg_float.py). The two are timed interleaved
(int, float, int, float, ... after one warm-up each) and the median is reported, so load on a shared machine hits
both alike. Writes JSON (with the machine, the command and the load average) and a plot beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from egg_float import FloatMinGRU, machine  # noqa: E402

from eggroll_llm.egg import intops, qeggroll  # noqa: E402
from eggroll_llm.egg.model import EggConfig, forward, init_params  # noqa: E402


def gemm_times(rows: int, k: int, m: int, repeats: int) -> dict:
    """The matrix product alone, [rows, k] by [k, m] (the mixer's shape at the largest population): PyTorch's CPU
    int32 GEMM in the layout EGG uses (w xᵀ) and the other one (x wᵀ), torch._int_mm (int8 in, int32 out) and
    float32 sgemm. Medians of interleaved repeats, seconds."""
    gen = torch.Generator().manual_seed(0)
    x8, w8 = (torch.randint(-127, 128, s, generator=gen, dtype=torch.int8) for s in ((rows, k), (m, k)))
    x32, w32, xf, wf = x8.int(), w8.int(), x8.float(), w8.float()
    w8t = w8.T.contiguous()
    fns = {"int32_w_xT": lambda: w32 @ x32.T, "int32_x_wT": lambda: x32 @ w32.T,
           "int8_torch_int_mm": lambda: torch._int_mm(x8, w8t), "float32_sgemm": lambda: xf @ wf.T}
    assert torch.equal((w32 @ x32.T).T, torch._int_mm(x8, w8t))  # every integer path is exact
    times = {name: [] for name in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            started = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - started)
    return {"shape": [rows, k, m], **{f"{name}_s": statistics.median(ts) for name, ts in times.items()}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="evals/results/egg/throughput.json")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--layers", type=int, default=1)
    p.add_argument("--mlp_mult", type=int, default=2)
    p.add_argument("--seq_len", type=int, default=64)
    p.add_argument("--populations", default="32,64,128,256,512")
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    config = EggConfig(args.hidden, args.layers, args.mlp_mult)
    params = init_params(config, 0)
    twin = FloatMinGRU(args.hidden, args.layers, args.mlp_mult).requires_grad_(False)
    rows = []
    for n in [int(v) for v in args.populations.split(",")]:
        tokens = torch.randint(1, 256, (n, args.seq_len + 1), generator=torch.Generator().manual_seed(n))
        pairs = qeggroll.pair_noise(config.shapes(), 0, 0, n, 1, 1)
        int_noise = qeggroll.member_noise(pairs, n)
        float_noise = {k: (a.float() / 16, b.float() / 16) for k, (a, b) in int_noise.items()}

        def run_int():
            logits = forward(params, config, tokens[:, :-1], int_noise, 4)
            return intops.target_log2_prob(logits, tokens[:, 1:]).sum(-1)

        def run_float():
            logits = twin(tokens[:, :-1], float_noise, sigma=1 / 16)
            return F.cross_entropy(logits.transpose(1, 2), tokens[:, 1:], reduction="none").sum(-1)

        times = {"int8": [], "float32": []}
        for fn in (run_int, run_float):
            fn()
        for _ in range(args.repeats):
            for name, fn in (("int8", run_int), ("float32", run_float)):
                started = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - started)
        row = {"population_size": n, "member_tokens": n * args.seq_len}
        for name, ts in times.items():
            row[f"{name}_member_tokens_per_s"] = n * args.seq_len / statistics.median(ts)
        row["int8_over_float32"] = row["int8_member_tokens_per_s"] / row["float32_member_tokens_per_s"]
        rows.append(row)
        print(json.dumps(row))
    gemm = gemm_times(n * args.seq_len, args.hidden, 2 * args.hidden, args.repeats)
    print(json.dumps(gemm))
    result = {"rows": rows, "gemm": gemm, "model": config.to_dict(), "seq_len": args.seq_len, "repeats": args.repeats,
              "threads": torch.get_num_threads(), "torch": torch.__version__, "machine": machine(),
              "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
              "command": " ".join(sys.argv), "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in ("int8", "float32"):
        ax.plot([r["population_size"] for r in rows], [r[f"{name}_member_tokens_per_s"] for r in rows], "o-",
                label=f"{name} population forward")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("population size N")
    ax.set_ylabel("member-tokens / s")
    ax.set_title(f"EGG hidden {args.hidden}, {args.layers} layer(s), {torch.get_num_threads()} thread")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=120)
    print(f"wrote {out} and {out.with_suffix('.png')}")


if __name__ == "__main__":
    main()
