"""A lever screen: named trials of recipes with overrides, run for a fixed number of updates (a trial may set its own
--max_steps) and evaluated on the TRAINING split, two at a time on one CPU thread each, summarised into one JSON
(and a plot) with every trial's command. Updates, not wall-clock, bound a trial: trials of one method cost the same
per update, and a step budget is immune to what else the machine runs.

Screens pick settings; reports are made on held-out problems no screen saw (docs/compare.md). The trials are listed
in a YAML file, one mapping per trial: `name`, `recipe` (a path under recipes/) and `overrides` (a list of
`eggroll-llm train` overrides). evals/three_way_screen.yaml is the screen behind recipes/tiny-arith-es-fullrank.yaml
and the three-way comparison (EGGROLL's and GRPO's screens have the same number of trials).

    python evals/lever_screen.py evals/three_way_screen.yaml --steps 50 \\
        --out evals/results/three-way-compare/screen.json [--runs runs/screen] [--only NAME,...]

A trial whose log's last line says "run written to" is kept when the screen is run again; others start again from
scratch.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("screen", type=Path, help="YAML list of trials (name, recipe, overrides)")
    parser.add_argument("--out", type=Path, required=True, help="summary JSON to write (a PNG beside it)")
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "screen", help="run directories")
    parser.add_argument("--steps", type=int, default=50, help="updates of each trial (unless it sets --max_steps)")
    parser.add_argument("--eval-limit", type=int, default=100, help="training-split problems per evaluation")
    parser.add_argument("--parallel", type=int, default=2, help="trials at once (one CPU thread each)")
    parser.add_argument("--only", help="comma-separated trial names to run (default: all)")
    return parser.parse_args(argv)


def command(trial: dict, run: Path, args) -> list[str]:
    return ["eggroll-llm", "train", str(ROOT / "recipes" / trial["recipe"]), "--output_dir", str(run),
            "--max_steps", str(args.steps), "--max_wall_s", "null", "--eval_every", "10",
            "--data.eval_split", "train", "--data.eval_limit", str(args.eval_limit),
            "--no-progress", *map(str, trial.get("overrides", []))]


def run_trial(trial: dict, args) -> dict:
    run = args.runs / trial["name"]
    log = args.runs / f"{trial['name']}.log"
    if not (log.is_file() and log.read_text().splitlines()[-1:] and
            "run written to" in log.read_text().splitlines()[-1]):
        shutil.rmtree(run, ignore_errors=True)
        with log.open("w") as out:
            subprocess.run(command(trial, run, args), stdout=out, stderr=subprocess.STDOUT, check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [(r["step"], r["eval_accuracy"]) for r in records if "eval_accuracy" in r]
    start = evals[0][1]
    first_gain = next((step for step, acc in evals if acc >= start + 0.10), None)
    return {"name": trial["name"], "recipe": trial["recipe"], "overrides": trial.get("overrides", []),
            "command": " ".join(command(trial, run, args)), "steps": records[-1]["step"], "start": start,
            "final": evals[-1][1], "best": max(a for _, a in evals), "mean": sum(a for _, a in evals) / len(evals),
            "plus_10_at_step": first_gain, "train_wall_s": records[-1]["wall_s"], "curve": evals}


def plot(trials: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for trial in trials:
        walls, accs = zip(*trial["curve"])
        ax.plot(walls, accs, label=trial["name"], marker=".")
    ax.set(xlabel="update", ylabel="accuracy (training split)", title=out.stem)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out.with_suffix(".png"), dpi=110)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    trials = yaml.safe_load(args.screen.read_text())
    if args.only:
        wanted = set(args.only.split(","))
        trials = [t for t in trials if t["name"] in wanted]
    args.runs.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.parallel) as pool:
        results = list(pool.map(lambda t: run_trial(t, args), trials))
    previous = json.loads(args.out.read_text())["trials"] if args.out.is_file() else []
    merged = {t["name"]: t for t in previous} | {t["name"]: t for t in results}
    summary = {"screen": str(args.screen.relative_to(ROOT)) if args.screen.is_absolute() else str(args.screen),
               "default_steps": args.steps, "eval_split": "train", "eval_limit": args.eval_limit, "threads_per_run": 1,
               "parallel": args.parallel, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                       "python": sys.version.split()[0]},
               "trials": list(merged.values())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    plot(summary["trials"], args.out)
    for t in summary["trials"]:
        print(f"{t['name']:24s} steps {t['steps']:4d}  start {t['start']:.3f}  final {t['final']:.3f}  "
              f"best {t['best']:.3f}  mean {t['mean']:.3f}  +10 at step {t['plus_10_at_step']}")


if __name__ == "__main__":
    main()
