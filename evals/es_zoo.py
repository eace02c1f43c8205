"""The classic ES strategies of the generic layer side by side with evosax 0.3.2, EvoTorch 0.6.1 and pyribs 0.12.

    bash evals/es_zoo.sh                 # builds .venv-zoo (torch, cmaes, ribs, jax, evosax, evotorch), then runs this
    .venv-zoo/bin/python evals/es_zoo.py --json evals/results/es_zoo.json --plot evals/results/es_zoo.png
    .venv-zoo/bin/python evals/es_zoo.py --parts digits --strategies cma_es --merge --json ... --plot ...  # one row

Each library runs in its own worker process with one thread, through its own public API, at the same settings
(the textbook defaults of each strategy, σ0 and the population below; nothing is tuned per library), on equal
evaluations, for `--seeds` seeds (the problems and the runners: evals/es_zoo_problems.py):

- functions: shifted sphere Σ (x − 1.5)², Rosenbrock, shifted Rastrigin (shift 1.5) at d = 10 (population 10,
  300 generations) and d = 1000 (population 24, 1000 generations), from x = 0 with σ0 = 0.5 (OpenAI-ES: fixed
  σ 0.1 and SGD at lr 0.01 on evosax's gradient scale, 0.1 on ours, which divides 1/σ out). Strategies and peers:
  `simple_es` (evosax SimpleES; EvoTorch's CEM, the nearest: elite mean and elite spread), `snes` (evosax SNES,
  EvoTorch SNES), `cma_es` (full covariance at d = 10, separable at d = 1000: evosax CMA_ES / Sep_CMA_ES,
  EvoTorch CMAES(separable=...)), `openai_es` (evosax Open_ES, mirrored, centred ranks). Recorded: the loss of the
  final centre (mean), and the median seconds of a generation (evosax's first two compile);
- digits: the MLP of evals/es_digits.py (64-128-10, 9.6k parameters), population 64, minibatches of 128 shared by
  every member, 300 generations, σ0 0.03, `snes` and `cma_es` (separable); every library scores a generation in
  one batched forward (ours: es.evaluate; EvoTorch: a vectorised Problem; evosax: vmap under jit). Recorded: test
  accuracy of the final centre, seconds per generation;
- maze (ours only; neither peer has novelty search): the deceptive point maze of evals/deceptive_maze.py, reward-
  only OpenAI-ES against NS-ES, NSR-ES, NSRA-ES and NSRA-ES with the paper's meta-population of 5 agents
  (eggroll_llm.novelty) on the same ES (population 32, σ 0.5, Adam at lr 0.1, 1000 generations). Recorded: the
  best centre reward of the run and whether it came within 0.1 of the goal;
- qd: MAP-Elites on the same maze (behaviour: the final position on a 20 × 20 grid over the arena; objective: the
  reward), ours (eggroll_llm.map_elites: the ES as emitter, a jump to a random elite every 20 generations) against
  pyribs' classic MAP-Elites (GaussianEmitter, σ 0.5), 32 evaluations a generation for 500. Recorded: coverage
  (the fraction of cells filled), the best reward in the archive.

Every run records the median wall-clock seconds of a generation and the median CPU seconds of the worker process
(`cpu_s_per_generation`), which a shared machine disturbs less, and the 1-minute load average when it ended.
`--merge` replaces, in an existing --json, only the rows of the (part, problem, d, strategy, library) groups this
command ran, and redraws the plot from the merged rows.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

from es_zoo_problems import DIGITS, DIMS, MAZE, OPENAI_LR, OPENAI_SIGMA, QD, RUNNERS, SHIFT, SIGMA0

LIBRARIES = ("eggroll_llm", "evosax", "evotorch", "ribs")
PARTS = ("functions", "digits", "maze", "qd")
PROBLEMS = ("sphere", "rosenbrock", "rastrigin")
STRATEGIES = ("simple_es", "snes", "cma_es", "openai_es")
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=None, help="write config, machine and results here")
    p.add_argument("--plot", type=Path, default=None, help="write the figure here (PNG)")
    p.add_argument("--merge", action="store_true", help="keep the other rows of an existing --json (and plot them)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per (problem, strategy, library)")
    p.add_argument("--dims", type=int, nargs="+", default=list(DIMS), choices=list(DIMS), help="function sizes")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS, help="which studies to run")
    p.add_argument("--problems", nargs="+", default=list(PROBLEMS), choices=PROBLEMS, help="functions to run")
    p.add_argument("--strategies", nargs="+", default=None,
                   help="only these strategies (functions / digits) or methods (maze: reward ns nsr nsra nsra-m5)")
    p.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)   # internal: jobs as JSON on stdin
    return p.parse_args(argv)


def worker(jobs: list[dict]) -> None:
    """Run jobs of one library in this process, one JSON line each."""
    root = Path(__file__).resolve().parents[1]
    sys.path[:0] = [str(root), str(root / "evals")]
    import torch

    torch.set_num_threads(1)
    for job in jobs:
        result = RUNNERS[job["library"], job["part"]](job)
        if result is not None:   # the 1-minute load when the run ended: the machine may be shared
            print(json.dumps({**job, **result, "load_average": os.getloadavg()[0]}), flush=True)


def plan(args: argparse.Namespace) -> list[dict]:
    def wanted(name: str) -> bool:
        return args.strategies is None or name in args.strategies

    jobs = []
    for seed in range(args.seeds):
        if "functions" in args.parts:
            for d in args.dims:
                N, G = DIMS[d]
                jobs += [{"part": "functions", "problem": p, "d": d, "population": N, "generations": G,
                          "strategy": s, "seed": seed, "library": lib}
                         for p in args.problems for s in STRATEGIES if wanted(s)
                         for lib in args.libraries if lib in ("eggroll_llm", "evosax", "evotorch")]
        if "digits" in args.parts:
            jobs += [{"part": "digits", "problem": "digits-mlp", "strategy": s, "seed": seed, "library": lib}
                     for s in DIGITS["strategies"] if wanted(s)
                     for lib in args.libraries if lib in ("eggroll_llm", "evosax", "evotorch")]
        if "maze" in args.parts and "eggroll_llm" in args.libraries:
            jobs += [{"part": "maze", "problem": "deceptive-maze", "strategy": m, "seed": seed,
                      "generations": MAZE["generations"], "library": "eggroll_llm"}
                     for m in (*MAZE["methods"], "nsra-m5") if wanted(m)]
        if "qd" in args.parts:
            jobs += [{"part": "qd", "problem": "deceptive-maze", "strategy": "map_elites", "seed": seed,
                      "generations": QD["generations"], "library": lib}
                     for lib in args.libraries if lib in ("eggroll_llm", "ribs")]
    return jobs


def group(r: dict) -> tuple:
    return r["part"], r["problem"], r.get("d"), r["strategy"], r["library"]


def summarise(rows: list[dict]) -> list[dict]:
    """Mean, min and max over seeds of final, median seconds per generation, per group."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault(group(r), []).append(r)
    out = []
    for (part, problem, d, strategy, library), rs in groups.items():
        finals = [float(r["final"]) for r in rs]
        entry = {"part": part, "problem": problem, "d": d, "strategy": strategy, "library": library,
                 "seeds": len(rs), "final_mean": statistics.fmean(finals), "final_min": min(finals),
                 "final_max": max(finals), "final_values": finals,
                 "s_per_generation": statistics.median(r["s_per_generation"] for r in rs)}
        if all("cpu_s_per_generation" in r for r in rs):
            entry["cpu_s_per_generation"] = statistics.median(r["cpu_s_per_generation"] for r in rs)
        if all("load_average" in r for r in rs):
            entry["load_average"] = [min(r["load_average"] for r in rs), max(r["load_average"] for r in rs)]
        if part in ("maze", "qd"):
            entry["solved"] = sum(bool(r["solved"]) for r in rs)
        if part == "qd":
            entry["best_values"] = [float(r["best"]) for r in rs]
        out.append(entry)
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 4, figsize=(18, 11))
    colours = {"eggroll_llm": "tab:orange", "evosax": "tab:blue", "evotorch": "tab:green", "ribs": "tab:purple"}

    def bars(ax, rows, strategies, value="final_mean", log=True):
        for j, lib in enumerate(LIBRARIES[:3]):
            for i, s in enumerate(strategies):
                r = next((r for r in rows if r["library"] == lib and r["strategy"] == s), None)
                if r is None:
                    continue
                v = r[value]
                err = [[v - r["final_min"]], [r["final_max"] - v]] if value == "final_mean" else None
                ax.bar(i + 0.27 * (j - 1), v, 0.27, yerr=err, color=colours[lib], label=lib if i == 0 else None)
        ax.set_xticks(range(len(strategies)), strategies)
        if log:
            ax.set_yscale("log")

    for row, d in enumerate(DIMS):
        for col, problem in enumerate(PROBLEMS):
            rows = [r for r in summary if r["part"] == "functions" and r["problem"] == problem and r["d"] == d]
            bars(axes[row, col], rows, STRATEGIES)
            axes[row, col].set_title(f"{problem}, d = {d}: final loss (min..max over seeds)")
    digits = [r for r in summary if r["part"] == "digits"]
    bars(axes[2, 0], digits, DIGITS["strategies"], log=False)
    axes[2, 0].set_title("digits MLP: test accuracy of the final centre")
    for r in digits:   # CPU time where recorded: wall-clock on a shared machine also counts the other jobs
        r["ms_per_generation"] = 1e3 * r.get("cpu_s_per_generation", r["s_per_generation"])
    bars(axes[2, 1], digits, DIGITS["strategies"], value="ms_per_generation", log=False)
    axes[2, 1].set_title("digits MLP: ms a generation (CPU where recorded)")
    maze = [r for r in summary if r["part"] == "maze"]
    axes[2, 2].bar([r["strategy"] for r in maze], [r["final_mean"] for r in maze], color="tab:orange")
    axes[2, 2].axhline(-0.1, color="k", ls="--", lw=1)
    axes[2, 2].set_title("maze: best centre reward (solved above the line)")
    qd = [r for r in summary if r["part"] == "qd"]
    for ax, key, title in ((axes[0, 3], "final_values", "MAP-Elites, maze: coverage of 20 × 20 cells"),
                           (axes[1, 3], "best_values", "MAP-Elites, maze: best reward in the archive")):
        ax.bar([r["library"] for r in qd], [statistics.fmean(r[key]) for r in qd],
               yerr=[[statistics.fmean(r[key]) - min(r[key]) for r in qd],
                     [max(r[key]) - statistics.fmean(r[key]) for r in qd]],
               color=[colours[r["library"]] for r in qd])
        ax.set_title(title)
    axes[1, 3].axhline(-0.1, color="k", ls="--", lw=1)
    axes[2, 3].axis("off")
    axes[0, 0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def run_jobs(args: argparse.Namespace) -> list[dict]:
    """Every job, one library at a time (never two measurements side by side), seed by seed, so that a busy spell
    of a shared machine falls on every library alike."""
    jobs, rows = plan(args), []
    env = {**os.environ, **THREADS}
    for seed, lib in ((seed, lib) for seed in range(args.seeds) for lib in args.libraries):
        mine = [j for j in jobs if j["library"] == lib and j["seed"] == seed]
        if not mine:
            continue
        print(f"{lib}, seed {seed}: {len(mine)} runs", flush=True)
        proc = subprocess.run([sys.executable, __file__, "--worker"], input=json.dumps(mine), env=env, text=True,
                              capture_output=True)
        if proc.returncode:
            sys.exit(f"{lib} worker failed:\n{proc.stderr[-3000:]}")
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                r = json.loads(line)
                rows.append(r)
                print(f"  {r['part']:9s} {r['problem']:14s} {str(r.get('d', '')):5s} {r['strategy']:10s} "
                      f"seed {r['seed']}: {r['final']:.4g} ({1e3 * r['s_per_generation']:.2f} ms/gen, "
                      f"{1e3 * r['cpu_s_per_generation']:.2f} CPU ms, load {r['load_average']:.1f})", flush=True)
    return rows


def machine() -> dict:
    import importlib.metadata as md

    versions = {}
    for name in ("torch", "cmaes", "ribs", "jax", "evosax", "evotorch"):
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    return {"processor": platform.processor() or platform.machine(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "threads": 1, "load_average": os.getloadavg(),
            "python": platform.python_version(), **versions}


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(json.load(sys.stdin))
        return
    if args.merge and (args.json is None or not args.json.exists()):
        sys.exit("--merge needs --json naming an existing results file; run without --merge to start one")
    rows = run_jobs(args)
    record = {"commands": [], "runs": []}
    if args.merge:
        record = json.loads(args.json.read_text())
        if "command" in record:            # a file from before commands were listed
            record["commands"] = [{"command": record.pop("command"), "machine": record.pop("machine")}]
        ran = {group(r) for r in rows}
        rows = [r for r in record["runs"] if group(r) not in ran] + rows
    summary = summarise(rows)
    if args.plot is not None:
        plot(summary, args.plot)
        print(f"wrote {args.plot}")
    if args.json is not None:
        config = {"seeds": args.seeds, "dims": {d: DIMS[d] for d in DIMS}, "shift": SHIFT, "sigma0": SIGMA0,
                  "openai_es": {"sigma": OPENAI_SIGMA, "lr_evosax": OPENAI_LR}, "digits": DIGITS, "maze": MAZE,
                  "qd": QD}
        command = {"command": " ".join(["python", *sys.argv]), "machine": machine()}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps({"commands": [*record["commands"], command], "config": config,
                                   "summary": summary, "runs": rows}, indent=1) + "\n")
        tmp.replace(args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
