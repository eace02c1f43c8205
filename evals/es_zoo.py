"""The classic ES strategies of the generic layer side by side with evosax 0.3.2 and EvoTorch 0.6.1.

    bash evals/es_zoo.sh                 # builds .venv-zoo (torch, cmaes, jax, evosax, evotorch), then runs this
    .venv-zoo/bin/python evals/es_zoo.py --json evals/results/es_zoo.json --plot evals/results/es_zoo.png

Each library runs in its own worker process with one thread, through its own public API, at the same settings
(the textbook defaults of each strategy, σ0 and the population below; nothing is tuned per library), on equal
evaluations, for `--seeds` seeds:

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
  only OpenAI-ES against NS-ES, NSR-ES and NSRA-ES (eggroll_llm.novelty) on the same ES (population 32, σ 0.5,
  Adam at lr 0.1, 1000 generations). Recorded: the best centre reward of the run and whether it came within 0.1 of
  the goal.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("eggroll_llm", "evosax", "evotorch")
PROBLEMS = ("sphere", "rosenbrock", "rastrigin")
STRATEGIES = ("simple_es", "snes", "cma_es", "openai_es")
SHIFT, SIGMA0, OPENAI_SIGMA, OPENAI_LR = 1.5, 0.5, 0.1, 0.01
DIMS = {10: (10, 300), 1000: (24, 1000)}                     # d -> (population, generations)
DIGITS = {"population": 64, "batch": 128, "generations": 300, "sigma": 0.03, "strategies": ("snes", "cma_es")}
THREADS = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
           "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=None, help="write config, machine and results here")
    p.add_argument("--plot", type=Path, default=None, help="write the figure here (PNG)")
    p.add_argument("--seeds", type=int, default=3, help="seeds per (problem, strategy, library)")
    p.add_argument("--dims", type=int, nargs="+", default=list(DIMS), choices=list(DIMS), help="function sizes")
    p.add_argument("--parts", nargs="+", default=["functions", "digits", "maze"],
                   choices=["functions", "digits", "maze"], help="which studies to run")
    p.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)   # internal: jobs as JSON on stdin
    return p.parse_args(argv)


def loss(problem: str, x, xp):
    """Rows of x [n, d] (torch or jax.numpy, `xp` its module) → loss [n]; minimum 0."""
    if problem == "sphere":
        return ((x - SHIFT) ** 2).sum(-1)
    if problem == "rastrigin":
        z = x - SHIFT
        return (z * z - 10 * xp.cos(2 * math.pi * z) + 10).sum(-1)
    return (100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2).sum(-1)


def timed(generation, generations: int) -> float:
    """Run generation(g) for g < generations → the median seconds of one (robust to a compile or a busy moment)."""
    times = []
    for g in range(generations):
        start = time.perf_counter()
        generation(g)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# --- the three libraries on the functions -------------------------------------------------------------------------

def ours_function(job: dict) -> dict:
    import torch
    from torch import nn

    from eggroll_llm.cma_es import CMAStrategy
    from eggroll_llm.es import EggrollES

    d, N, G, name = job["d"], job["population"], job["generations"], job["strategy"]
    model = nn.Module()
    model.x = nn.Parameter(torch.zeros(d))
    strategy = CMAStrategy(separable=d > 100) if name == "cma_es" else name
    sigma, lr = (OPENAI_SIGMA, OPENAI_LR / OPENAI_SIGMA) if name == "openai_es" else (SIGMA0, 1.0)
    es = EggrollES(model, population_size=N, sigma=sigma, lr=lr, strategy=strategy, seed=job["seed"],
                   fitness="centered_rank")

    def fitness(m) -> float:
        return -float(loss(job["problem"], m.x.detach()[None], torch))

    return {"s_per_generation": timed(lambda g: es.step(fitness), G), "final": -fitness(model)}


def evosax_algorithm(name: str, d: int, N: int, sigma: float):
    import jax.numpy as jnp
    import optax
    from evosax import algorithms as A

    solution = jnp.zeros(d)
    if name == "openai_es":
        es = A.Open_ES(population_size=N, solution=solution, optimizer=optax.sgd(OPENAI_LR),
                       std_schedule=optax.constant_schedule(OPENAI_SIGMA))
        return es, es.default_params
    cls = {"simple_es": A.SimpleES, "snes": A.SNES, "cma_es": A.CMA_ES if d <= 100 else A.Sep_CMA_ES}[name]
    es = cls(population_size=N, solution=solution)
    return es, es.default_params.replace(std_init=sigma)


def evosax_run(es, params, mean, seed: int, generations: int, fitness_fn, batches=None):
    """Run `generations` jitted ask/evaluate/tell generations from `mean` → (state, median s per generation; the
    first two compile)."""
    import jax

    run = {"key": jax.random.key(seed), "state": es.init(jax.random.key(seed), mean, params)}

    @jax.jit
    def generation(key, state, batch):
        k_ask, k_tell = jax.random.split(key)
        population, state = es.ask(k_ask, state, params)
        state, _ = es.tell(k_tell, population, fitness_fn(population, batch), state, params)
        return state

    def one(g: int) -> None:
        run["key"], sub = jax.random.split(run["key"])
        run["state"] = generation(sub, run["state"], None if batches is None else batches[g])
        jax.block_until_ready(run["state"].mean)

    seconds = timed(one, generations)
    return run["state"], seconds


def evosax_function(job: dict) -> dict:
    import jax.numpy as jnp

    es, params = evosax_algorithm(job["strategy"], job["d"], job["population"], SIGMA0)
    state, s = evosax_run(es, params, jnp.zeros(job["d"]), job["seed"], job["generations"],
                          lambda X, _: loss(job["problem"], X, jnp))
    return {"final": float(loss(job["problem"], state.mean[None], jnp)[0]), "s_per_generation": s}


def evotorch_searcher(name: str, problem, N: int, sigma: float, centre):
    from evotorch.algorithms import CEM, CMAES, SNES

    if name == "snes":
        return SNES(problem, stdev_init=sigma, popsize=N, center_init=centre)
    if name == "simple_es":
        return CEM(problem, popsize=N, parenthood_ratio=0.5, stdev_init=sigma, center_init=centre)
    if name == "cma_es":
        return CMAES(problem, stdev_init=sigma, popsize=N, center_init=centre, separable=problem.solution_length > 100)
    return None


def evotorch_function(job: dict) -> dict | None:
    import torch
    from evotorch import Problem

    problem = Problem("min", lambda X: loss(job["problem"], X, torch), solution_length=job["d"],
                      initial_bounds=(-1.0, 1.0), vectorized=True, seed=job["seed"])
    searcher = evotorch_searcher(job["strategy"], problem, job["population"], SIGMA0, torch.zeros(job["d"]))
    if searcher is None:
        return None
    seconds = timed(lambda g: searcher.step(), job["generations"])
    centre = searcher.status["center"]
    return {"final": float(loss(job["problem"], torch.as_tensor(centre)[None], torch)), "s_per_generation": seconds}


# --- digits -------------------------------------------------------------------------------------------------------

def digits_data(seed: int):
    """(train, test, minibatch indices [G, B], the MLP's initial flat parameters) shared by every library."""
    import torch

    sys.path.insert(0, str(ROOT / "evals"))
    from es_digits import digits, network

    (X, y), (Xt, yt) = digits(seed)
    g = torch.Generator().manual_seed(seed + 1)
    batches = torch.randint(0, len(y), (DIGITS["generations"], DIGITS["batch"]), generator=g)
    flat = torch.cat([p.detach().reshape(-1) for p in network("mlp", seed).parameters()])
    return (X.flatten(1), y), (Xt.flatten(1), yt), batches, flat


def unflatten(P, xp):
    """[n, 9610] → the MLP's (W1 [n, 128, 64], b1, W2 [n, 10, 128], b2), nn.Linear's layout and order."""
    n = P.shape[0]
    cuts = [0, 128 * 64, 128 * 64 + 128, 128 * 64 + 128 + 1280, 9610]
    W1, b1, W2, b2 = (P[:, a:b] for a, b in zip(cuts, cuts[1:]))
    return W1.reshape(n, 128, 64), b1, W2.reshape(n, 10, 128), b2


def mlp_logits(P, X, xp):
    """Logits [n, B, 10] of n flat parameter vectors P [n, 9610] on inputs X [B, 64]."""
    W1, b1, W2, b2 = unflatten(P, xp)
    h = xp.einsum("bi,nhi->nbh", X, W1) + b1[:, None]                              # [n, B, 128]
    h = xp.where(h > 0, h, 0.0)
    return xp.einsum("nbh,noh->nbo", h, W2) + b2[:, None]


def ours_digits(job: dict) -> dict:
    from es_digits import accuracy, network, scorer

    from eggroll_llm.cma_es import CMAStrategy
    from eggroll_llm.es import EggrollES

    (X, y), (Xt, yt), batches, _ = digits_data(job["seed"])
    model, N = network("mlp", job["seed"]), DIGITS["population"]
    strategy = CMAStrategy(separable=True) if job["strategy"] == "cma_es" else job["strategy"]
    es = EggrollES(model, population_size=N, sigma=DIGITS["sigma"], lr=1.0, strategy=strategy, seed=job["seed"])
    seconds = timed(lambda g: es.tell(es.evaluate(scorer("mlp", X[batches[g]], y[batches[g]], N))), len(batches))
    return {"final": accuracy(model, "mlp", Xt.view(-1, 1, 8, 8), yt), "s_per_generation": seconds}


def evotorch_digits(job: dict) -> dict:
    import torch
    import torch.nn.functional as F
    from evotorch import Problem

    (X, y), (Xt, yt), batches, flat = digits_data(job["seed"])
    current = {}

    def cross_entropy(P):
        Xb, yb = current["batch"]
        logits = mlp_logits(P, Xb, torch)                                           # [N, B, 10]
        return F.cross_entropy(logits.transpose(1, 2), yb.expand(P.shape[0], -1), reduction="none").mean(1)

    problem = Problem("min", cross_entropy, solution_length=flat.numel(), initial_bounds=(-0.1, 0.1),
                      vectorized=True, seed=job["seed"])
    searcher = evotorch_searcher(job["strategy"], problem, DIGITS["population"], DIGITS["sigma"], flat)
    def one(g: int) -> None:
        current["batch"] = (X[batches[g]], y[batches[g]])
        searcher.step()

    seconds = timed(one, len(batches))
    centre = torch.as_tensor(searcher.status["center"])[None]
    accuracy = float((mlp_logits(centre, Xt, torch)[0].argmax(-1) == yt).float().mean())
    return {"final": accuracy, "s_per_generation": seconds}


def evosax_digits(job: dict) -> dict:
    import jax.numpy as jnp
    import optax

    (X, y), (Xt, yt), batches, flat = digits_data(job["seed"])
    es, params = evosax_algorithm(job["strategy"], flat.numel(), DIGITS["population"], DIGITS["sigma"])
    Xj, yj, Xtj = jnp.asarray(X.numpy()), jnp.asarray(y.numpy()), jnp.asarray(Xt.numpy())

    def cross_entropy(P, b):
        logits = mlp_logits(P, Xj[b], jnp)
        return optax.softmax_cross_entropy_with_integer_labels(logits, yj[b][None].repeat(P.shape[0], 0)).mean(1)

    state, s = evosax_run(es, params, jnp.asarray(flat.numpy()), job["seed"], len(batches), cross_entropy,
                          jnp.asarray(batches.numpy()))
    logits = mlp_logits(state.mean[None], Xtj, jnp)[0]
    return {"final": float((logits.argmax(-1) == jnp.asarray(yt.numpy())).mean()), "s_per_generation": s}


# --- the deceptive maze (ours) -------------------------------------------------------------------------------------

def ours_maze(job: dict) -> dict:
    from deceptive_maze import SOLVED, Maze, OpenLoopPolicy

    from eggroll_llm.es import EggrollES
    from eggroll_llm.novelty import NoveltySearch

    maze, policy = Maze(), OpenLoopPolicy()
    method = job["strategy"]
    es = EggrollES(policy, population_size=32, sigma=0.5, lr=0.1, strategy="openai_es", optimizer="adam",
                   seed=job["seed"], fitness="centered_rank" if method == "reward" else "none")
    search = None if method == "reward" else NoveltySearch(es, maze.behaviour, maze.reward, method=method)
    run = {"best": maze.reward(policy), "first": None}

    def one(g: int) -> None:
        if search is None:
            es.step(maze.reward)
            reward = maze.reward(policy)
        else:
            reward = search.step()["centre_reward"]
        run["best"] = max(run["best"], reward)
        if run["first"] is None and run["best"] >= -SOLVED:
            run["first"] = g + 1

    seconds = timed(one, job["generations"])
    return {"final": run["best"], "solved": run["best"] >= -SOLVED, "first_solved": run["first"],
            "s_per_generation": seconds}


RUNNERS = {("eggroll_llm", "functions"): ours_function, ("evosax", "functions"): evosax_function,
           ("evotorch", "functions"): evotorch_function, ("eggroll_llm", "digits"): ours_digits,
           ("evosax", "digits"): evosax_digits, ("evotorch", "digits"): evotorch_digits,
           ("eggroll_llm", "maze"): ours_maze}


def worker(jobs: list[dict]) -> None:
    """Run jobs of one library in this process, one JSON line each."""
    sys.path[:0] = [str(ROOT), str(ROOT / "evals")]
    import torch

    torch.set_num_threads(1)
    for job in jobs:
        result = RUNNERS[job["library"], job["part"]](job)
        if result is not None:   # the 1-minute load when the run ended: the machine may be shared
            print(json.dumps({**job, **result, "load_average": os.getloadavg()[0]}), flush=True)


def plan(args: argparse.Namespace) -> list[dict]:
    jobs = []
    for seed in range(args.seeds):
        if "functions" in args.parts:
            for d in args.dims:
                N, G = DIMS[d]
                jobs += [{"part": "functions", "problem": p, "d": d, "population": N, "generations": G,
                          "strategy": s, "seed": seed, "library": lib}
                         for p in PROBLEMS for s in STRATEGIES for lib in args.libraries]
        if "digits" in args.parts:
            jobs += [{"part": "digits", "problem": "digits-mlp", "strategy": s, "seed": seed, "library": lib}
                     for s in DIGITS["strategies"] for lib in args.libraries]
        if "maze" in args.parts and "eggroll_llm" in args.libraries:
            jobs += [{"part": "maze", "problem": "deceptive-maze", "strategy": m, "seed": seed, "generations": 1000,
                      "library": "eggroll_llm"} for m in ("reward", "ns", "nsr", "nsra")]
    return jobs


def summarise(rows: list[dict]) -> list[dict]:
    """Mean, min and max over seeds of final and s_per_generation, per (part, problem, d, strategy, library)."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["part"], r["problem"], r.get("d"), r["strategy"], r["library"]), []).append(r)
    out = []
    for (part, problem, d, strategy, library), rs in groups.items():
        finals = [float(r["final"]) for r in rs]
        entry = {"part": part, "problem": problem, "d": d, "strategy": strategy, "library": library,
                 "seeds": len(rs), "final_mean": statistics.fmean(finals), "final_min": min(finals),
                 "final_max": max(finals), "final_values": finals,
                 "s_per_generation": statistics.median(r["s_per_generation"] for r in rs)}
        if part == "maze":
            entry["solved"] = sum(bool(r["solved"]) for r in rs)
        out.append(entry)
    return out


def plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 3, figsize=(14, 11))
    colours = {"eggroll_llm": "tab:orange", "evosax": "tab:blue", "evotorch": "tab:green"}

    def bars(ax, rows, strategies, value="final_mean", log=True):
        for j, lib in enumerate(LIBRARIES):
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
    for r in digits:
        r["ms_per_generation"] = 1e3 * r["s_per_generation"]
    bars(axes[2, 1], digits, DIGITS["strategies"], value="ms_per_generation", log=False)
    axes[2, 1].set_title("digits MLP: ms per generation (one thread)")
    maze = [r for r in summary if r["part"] == "maze"]
    axes[2, 2].bar([r["strategy"] for r in maze], [r["final_mean"] for r in maze], color="tab:orange")
    axes[2, 2].axhline(-0.1, color="k", ls="--", lw=1)
    axes[2, 2].set_title("deceptive maze: best centre reward (solved above the line)")
    axes[0, 0].legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker(json.load(sys.stdin))
        return
    jobs, rows = plan(args), []
    env = {**os.environ, **THREADS}
    # one library at a time, never two measurements side by side; seed by seed, so a busy spell of a shared
    # machine falls on every library alike
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
                rows.append(json.loads(line))
                r = rows[-1]
                print(f"  {r['part']:9s} {r['problem']:14s} {str(r.get('d', '')):5s} {r['strategy']:9s} "
                      f"seed {r['seed']}: {r['final']:.4g} ({1e3 * r['s_per_generation']:.2f} ms/gen)", flush=True)
    summary = summarise(rows)
    if args.plot is not None:
        plot(summary, args.plot)
        print(f"wrote {args.plot}")
    if args.json is not None:
        import importlib.metadata as md

        versions = {}
        for name in ("torch", "cmaes", "jax", "evosax", "evotorch"):
            try:
                versions[name] = md.version(name)
            except md.PackageNotFoundError:
                versions[name] = None
        machine = {"processor": platform.processor() or platform.machine(), "platform": platform.platform(),
                   "cpu_count": os.cpu_count(), "threads": 1, "load_average": os.getloadavg(),
                   "python": platform.python_version(), **versions}
        config = {"seeds": args.seeds, "dims": {d: DIMS[d] for d in args.dims}, "parts": args.parts,
                  "libraries": args.libraries, "shift": SHIFT, "sigma0": SIGMA0,
                  "openai_es": {"sigma": OPENAI_SIGMA, "lr_evosax": OPENAI_LR}, "digits": DIGITS}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.json.with_suffix(".tmp")
        tmp.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "config": config, "machine": machine,
                                   "summary": summary, "runs": rows}, indent=1) + "\n")
        tmp.replace(args.json)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
