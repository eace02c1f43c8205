"""The population-scaling study: does a larger EGGROLL population learn more in the same wall-clock?

For each population size N the recipe runs with the same rows per step (members x prompts each = --rows) and the
same distinct prompts per step (groups of --group members share their prompts), so N trades prompts per member for
members: N = 32 answers 32 prompts each, N = 1024 one each. Each N first gets a short learning-rate sweep
(--lrs, --sweep-wall seconds each), then a full run (--wall seconds) at the lr whose sweep run ended with the best
held-out accuracy (with a single --lrs value there is no sweep; --lr runs every N at one lr and still records the
sweep). Runs go --parallel at a time, one CPU thread each.

Writes the run directories to RUNS (default runs/OUT-NAME/); OUT/scaling.json (every run's curve, the sweep, the
chosen lr, the gain per N, the machine and the command), OUT/accuracy_vs_wall.png (held-out accuracy vs wall-clock
per N) and OUT/gain_vs_population.png (held-out gain at the end of the budget vs N).

    bash evals/population_scaling.sh          # both targets, as recorded
    python evals/population_scaling.py --recipe recipes/tiny-arith-eggroll-blocks.yaml \
        --out evals/results/population-scaling-blocks --lrs 0.5,1 --sweep-wall 100 --lr 1
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "tiny-arith-eggroll-blocks.yaml")
    parser.add_argument("--out", type=Path, required=True, help="results folder (scaling.json, plots)")
    parser.add_argument("--runs", type=Path, help="run directories (default: runs/ + the --out folder's name)")
    parser.add_argument("--sizes", default="32,64,128,256,512,1024", help="population sizes N, comma-separated")
    parser.add_argument("--rows", type=int, default=1024, help="rows per step, N x prompts per member")
    parser.add_argument("--group", type=int, default=32, help="members that share their prompts (a fitness group)")
    parser.add_argument("--lrs", default="0.01,0.03,0.1", help="learning rates of the sweep, comma-separated")
    parser.add_argument("--lr", type=float, help="run every N at this lr after the sweep, whatever the sweep chose "
                        "(for a sweep too short to separate the lrs; the sweep is still run and recorded)")
    parser.add_argument("--sweep-wall", type=float, default=150.0, help="training seconds of each sweep run")
    parser.add_argument("--wall", type=float, default=600.0, help="training seconds of each full run")
    parser.add_argument("--parallel", type=int, default=2, help="runs at once (one CPU thread each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("overrides", nargs="*", help="extra recipe overrides, after --, e.g. -- --es.sigma 0.03")
    return parser.parse_args(argv)


def layout(n: int, rows: int, group: int) -> list[str]:
    if rows % n or n % min(group, n):
        raise SystemExit(f"N={n} must divide --rows {rows} and be a multiple of --group {group} (or smaller)")
    return ["--es.population_size", str(n), "--es.prompts_per_member", str(rows // n),
            "--es.members_per_prompt", str(min(group, n))]


def finished(metrics: Path, wall: float) -> bool:
    """A run is finished once its last record reached the wall-clock budget (an interrupted one also has adapter/)."""
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    try:
        return bool(lines) and json.loads(lines[-1])["wall_s"] >= wall
    except json.JSONDecodeError:  # a torn last line: the run was killed mid-write
        return False


def train(args, run: Path, n: int, lr: float, wall: float) -> list[dict]:
    """One run (skipped when it already finished: the study resumes where it stopped); its metrics records."""
    metrics = run / "metrics.jsonl"
    if not finished(metrics, wall):
        command = ["eggroll-llm", "train", str(args.recipe), "--output_dir", str(run), "--seed", str(args.seed),
                   "--max_wall_s", str(wall), "--max_steps", "100000", "--es.lr", str(lr), "--no-progress",
                   *layout(n, args.rows, args.group), *args.overrides]
        if run.exists():
            command.append("--resume")
        log = run.parent / f"{run.name}.log"  # not with_suffix: "lr0.5" has a dot
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("a") as handle:  # a resumed run keeps the log of its first part
            done = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
        if done.returncode:
            raise SystemExit(f"{' '.join(command)} failed ({done.returncode}); see {log}")
    return [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]


def curve(records: list[dict]) -> list[tuple[float, float]]:
    return [(r["wall_s"], r["eval_accuracy"]) for r in records if "eval_accuracy" in r]


def plot(results: dict, out: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for n, entry in results.items():
        xs, ys = zip(*entry["curve"])
        ax.plot(xs, ys, marker=".", label=f"N={n} (lr {entry['lr']})")
    ax.set(xlabel="training wall-clock (s)", ylabel="held-out accuracy", title="EGGROLL: accuracy vs wall-clock per N")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(out / "accuracy_vs_wall.png", dpi=120, bbox_inches="tight")

    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    sizes = [int(n) for n in results]
    ax.plot(sizes, [results[str(n)]["gain_final"] for n in sizes], marker="o", label="final - start")
    ax.plot(sizes, [results[str(n)]["gain_best"] for n in sizes], marker="s", linestyle="--", label="best - start")
    ax.axhline(0, color="grey", linewidth=1)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="population size N (equal rows per step)", ylabel="held-out accuracy gain",
           title="Gain at the end of the budget vs N")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.savefig(out / "gain_vs_population.png", dpi=120, bbox_inches="tight")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    sizes = [int(n) for n in args.sizes.split(",")]
    lrs = [float(lr) for lr in args.lrs.split(",")]
    runs = args.runs or ROOT / "runs" / args.out.name
    started = time.time()
    with ThreadPoolExecutor(args.parallel) as pool:  # threads only wait on subprocesses
        # one lr is no sweep: every N runs at it
        sweep_jobs = {(n, lr): pool.submit(train, args, runs / f"sweep-N{n}-lr{lr:g}", n, lr, args.sweep_wall)
                      for n in sizes for lr in lrs if len(lrs) > 1}
        sweep = {key: job.result() for key, job in sweep_jobs.items()}
        chosen = {n: max(lrs, key=lambda lr: (curve(sweep[n, lr])[-1][1], -lr) if sweep else 0) for n in sizes}
        used = {n: chosen[n] if args.lr is None else args.lr for n in sizes}
        full_jobs = {n: pool.submit(train, args, runs / f"N{n}-lr{used[n]:g}", n, used[n], args.wall) for n in sizes}
        full = {n: job.result() for n, job in full_jobs.items()}
    results = {}
    for n in sizes:
        points = curve(full[n])
        start, final, best = points[0][1], points[-1][1], max(a for _, a in points)
        results[str(n)] = {"lr": used[n], "sweep_choice": chosen[n], "prompts_per_member": args.rows // n,
                           "steps": full[n][-1]["step"],
                           "start": start, "final": final, "best": best, "gain_final": final - start,
                           "gain_best": best - start, "curve": points,
                           "sweep": {f"{lr:g}": curve(sweep[n, lr])[-1][1] for lr in lrs if sweep}}
    args.out.mkdir(parents=True, exist_ok=True)
    machine = {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
               "threads_per_run": 1, "parallel_runs": args.parallel, "python": platform.python_version()}
    record = {"command": " ".join([sys.executable.rsplit("/", 1)[-1], *sys.argv]), "recipe": str(args.recipe),
              "rows_per_step": args.rows, "group": args.group, "wall_s": args.wall, "sweep_wall_s": args.sweep_wall,
              "overrides": args.overrides, "machine": machine, "elapsed_s": round(time.time() - started),
              "results": results}
    (args.out / "scaling.json").write_text(json.dumps(record, indent=1) + "\n")
    plot(results, args.out)
    for n, entry in results.items():
        print(f"N={n:>5}  lr {entry['lr']:<6g} {entry['steps']:>4} steps  {entry['start']:.3f} -> {entry['final']:.3f} "
              f"(best {entry['best']:.3f})")


if __name__ == "__main__":
    main()
