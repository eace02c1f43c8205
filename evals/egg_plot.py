"""Validation bits/byte against wall-clock for an EGG run and its float32 twin, with the baselines: JSON + plot.

    python evals/egg_plot.py RUNS/egg RUNS/float --out evals/results/egg --command "bash evals/egg_train.sh"

Reads each run's metrics.jsonl (both write val_bits_per_byte, wall_s and the *_bits_per_byte baselines of the same
validation windows) and writes OUT/train.json (the curves, the final and best values, the baselines, the time each
run first went below the unigram and bigram baselines, the machine and the command) and OUT/train.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from egg_float import machine  # noqa: E402

BASELINES = ("uniform", "unigram", "bigram", "zlib")


def curve(run_dir: Path) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    evals = [r for r in records if "val_bits_per_byte" in r]
    points = [{"wall_s": r["wall_s"], "step": r["step"], "val_bits_per_byte": r["val_bits_per_byte"]} for r in evals]
    base = {f"{b}_bits_per_byte": evals[0][f"{b}_bits_per_byte"] for b in BASELINES}
    below = {}
    for b in ("unigram", "bigram"):
        hit = next((p for p in points if p["val_bits_per_byte"] < base[f"{b}_bits_per_byte"]), None)
        below[f"wall_s_below_{b}"] = None if hit is None else hit["wall_s"]
    config = json.loads((run_dir / "config.json").read_text())
    return {"run_dir": str(run_dir), "config": config, "steps": records[-1]["step"],
            "final_val_bits_per_byte": points[-1]["val_bits_per_byte"],
            "best_val_bits_per_byte": min(p["val_bits_per_byte"] for p in points), "wall_s": records[-1]["wall_s"],
            **below, "baselines": base, "points": points}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("egg_run", type=Path)
    p.add_argument("float_run", type=Path)
    p.add_argument("--out", type=Path, default=Path("evals/results/egg"))
    p.add_argument("--command", default="")
    p.add_argument("--load_log", type=Path, help="lines 'TIME LOAD1 LOAD5 LOAD15' sampled during the runs")
    args = p.parse_args()
    runs = {"egg_int8_eggroll": curve(args.egg_run), "float32_mingru_adam": curve(args.float_run)}
    baselines = runs["egg_int8_eggroll"]["baselines"]
    assert baselines == runs["float32_mingru_adam"]["baselines"], "the two runs were scored on different windows"
    result = {"runs": runs, "baselines": baselines, "command": args.command, "machine": machine(),
              "cpu_count": os.cpu_count(), "load_average_at_end": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.load_log and args.load_log.is_file():  # a shared machine: how many runnable jobs the runs shared it with
        loads = [float(line.split()[1]) for line in args.load_log.read_text().splitlines() if line.strip()]
        result["load_average_1min_during_runs"] = {"mean": sum(loads) / len(loads), "min": min(loads),
                                                   "max": max(loads), "samples": len(loads)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "train.json").write_text(json.dumps(result, indent=2) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, run in runs.items():
        ax.plot([q["wall_s"] / 60 for q in run["points"]], [q["val_bits_per_byte"] for q in run["points"]], label=name)
    for b, style in zip(BASELINES, (":", "--", "-.", (0, (1, 3)))):
        ax.axhline(baselines[f"{b}_bits_per_byte"], color="grey", linestyle=style, linewidth=1,
                   label=f"{b} {baselines[f'{b}_bits_per_byte']:.2f}")
    ax.set_xlabel("wall-clock (minutes, one thread)")
    ax.set_ylabel("validation bits / byte")
    ax.set_ylim(0, 8.5)
    ax.legend(fontsize=8)
    ax.set_title("EGG (int8, integer EGGROLL) vs float32 minGRU (Adam), same data")
    fig.tight_layout()
    fig.savefig(args.out / "train.png", dpi=120)
    print(json.dumps({k: {m: v[m] for m in ("final_val_bits_per_byte", "wall_s_below_unigram", "wall_s_below_bigram")}
                      for k, v in runs.items()}))


if __name__ == "__main__":
    main()
