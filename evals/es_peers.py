"""The generic ES layer (eggroll_llm.es.EggrollES) side by side with the PyPI peers torcheggroll 0.2.0,
eggroll-trainer 0.1.0 and eggroll-es 0.2.0, each through its own public API, on two problems:

- toy: a 64-256-1 tanh MLP student regressed onto a fixed teacher of the same shape, fitness −MSE on 512 fixed
  samples, population 64, rank 4, 50 steps. Each library runs at its best (σ, lr) on seed 0 from a coarse grid
  (SIGMAS × LRS) refined around its best (× REFINE on each axis), then 3 seeds × 3 interleaved repeats give its
  final fitness and its median seconds per step;
- probe: one 1024-4096-1024 ReLU MLP (8.4M parameters), population 64, every member scored on the same 32 inputs
  (fitness −MSE against fixed targets): two steps, each timed, and the peak memory above the process's memory
  before the ES object was built, against one plain batched forward of the same inputs (64 × 32 rows).

    bash evals/es_peers.sh                       # builds .venv-peers, then runs this script (~25 min, one core)
    .venv-peers/bin/python evals/es_peers.py --json evals/results/es_peers.json

Every measurement runs in its own worker process (`--worker`) with one torch thread, so peak memory is the worker's
own and timings do not share a process with another library. eggroll_llm runs from this checkout (sys.path), the
peers from the environment's site-packages. The project's layer is measured on both of its scoring paths:
`es.step(fitness_fn)` (one forward per member, as eggroll-trainer) and batched (`evaluate` / `tell`, one forward),
with EGGROLL's rank-4 noise, and once more per member with its dense OpenAI-ES strategy: eggroll-es's "rank"
perturbation is dense too (an elementwise sum of r products), and the toy is small enough for the rank of the noise
to show in the final fitness.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARIES = ("eggroll_llm step", "eggroll_llm batched", "eggroll_llm step openai-es", "eggroll-trainer", "torcheggroll",
             "eggroll-es")
PEERS = {"eggroll-trainer": "eggroll-trainer==0.1.0", "torcheggroll": "torcheggroll==0.2.0",
         "eggroll-es": "eggroll-es==0.2.0"}
SIGMAS = (0.003, 0.01, 0.03, 0.1)                           # coarse grid, then a finer one around each best
LRS = (1e-4, 3e-4, 1e-3, 3e-3, 0.01, 0.03, 0.1, 0.3, 1.0, 3.0)
REFINE = (0.5, 0.7, 1.0, 1.4, 2.0)                          # factors on the coarse best σ and lr
POPULATION, RANK = 64, 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--json", type=Path, default=None, help="write config, machine, grids and results here")
    p.add_argument("--steps", type=int, default=50, help="toy ES steps")
    p.add_argument("--seeds", type=int, default=3, help="toy seeds at the best setting")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats of every timed measurement")
    p.add_argument("--libraries", nargs="+", default=list(LIBRARIES), choices=LIBRARIES)
    # internal: one measurement in this process
    p.add_argument("--worker", choices=["toy", "probe", "plain"], default=None, help=argparse.SUPPRESS)
    p.add_argument("--library", default=None, help=argparse.SUPPRESS)
    p.add_argument("--settings", default=None, help=argparse.SUPPRESS)  # JSON list of [sigma, lr, seed]
    return p.parse_args(argv)


# ---------------------------------------------------------------- problems

def toy_problem(seed: int):
    """(student, X [512, 64], Y [512, 1]): a fixed teacher and data; the student's init follows `seed`."""
    import torch
    from torch import nn

    def mlp(init_seed: int) -> nn.Module:
        torch.manual_seed(init_seed)
        return nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 1))

    teacher = mlp(1000)
    X = torch.randn(512, 64, generator=torch.Generator().manual_seed(1001))
    with torch.no_grad():
        Y = teacher(X)
    return mlp(seed), X, Y


def probe_problem():
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(1024, 4096), nn.ReLU(), nn.Linear(4096, 1024))
    X, T = torch.randn(32, 1024), torch.randn(32, 1024)
    return model, X, T


def make_step(library: str, model, X, Y, sigma: float, lr: float, seed: int):
    """One ES step of `library` on fitness −MSE(model(X), Y), through that library's public API."""
    import torch
    from torch.func import functional_call

    def fitness(m) -> float:
        with torch.no_grad():
            return -float(((m(X) - Y) ** 2).mean())

    if library.startswith("eggroll_llm"):
        sys.path.insert(0, str(ROOT))
        from eggroll_llm.es import EggrollES
        from eggroll_llm.openai_es import OpenAIES

        if library.endswith("openai-es"):
            es = OpenAIES(model, population_size=POPULATION, sigma=sigma, lr=lr, seed=seed)
        else:
            es = EggrollES(model, population_size=POPULATION, sigma=sigma, lr=lr, rank=RANK, seed=seed)
        if library.startswith("eggroll_llm step"):
            return lambda: es.step(fitness)
        Xe = X.expand(POPULATION, *X.shape)  # one row per member, the shared input as a stride-0 expand

        def score(m, population):
            population.set_rows(torch.arange(POPULATION))
            return -((m(Xe) - Y) ** 2).mean(dim=(1, 2))
        return lambda: es.tell(es.evaluate(score))
    if library == "eggroll-trainer":
        from eggroll_trainer import EGGROLLTrainer

        trainer = EGGROLLTrainer(model.parameters(), model, fitness, population_size=POPULATION, learning_rate=lr,
                                 sigma=sigma, rank=RANK, seed=seed)
        return trainer.step
    if library == "torcheggroll":
        from torcheggroll import TorchEggrollES

        es = TorchEggrollES(model, pop_size=POPULATION, sigma=sigma, lr=lr, rank=RANK, antithetic=True)
        return lambda: es.step(X, lambda out, target: ((out - target) ** 2).mean(), Y)
    if library == "eggroll-es":
        from eggroll import EggrollConfig, LowRankNoiser, evolve_step

        config = EggrollConfig(population_size=POPULATION, rank=RANK, sigma=sigma, lr=lr, device="cpu", seed=seed)
        params = {name: p.detach().clone() for name, p in model.named_parameters()}
        noiser = LowRankNoiser({name: p.shape for name, p in params.items()}, config)

        def step():
            perturbations = noiser.sample_perturbations(POPULATION // 2)  # antithetic: 2 members per sample
            with torch.no_grad():
                scores = torch.tensor([-float(((functional_call(model, {k: params[k] + d[k] for k in params}, (X,))
                                                - Y) ** 2).mean()) for d in perturbations])
            params.update(evolve_step(params, perturbations, scores, config))
            with torch.no_grad():
                for name, p in model.named_parameters():
                    p.copy_(params[name])
        return step
    raise ValueError(f"unknown library {library!r}")


# ---------------------------------------------------------------- workers (one measurement per process)

def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def worker(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(1)
    if args.worker == "toy":
        runs = []
        for sigma, lr, seed in json.loads(args.settings):
            model, X, Y = toy_problem(seed)
            step, seconds, final = make_step(args.library, model, X, Y, sigma, lr, seed), [], None
            try:
                for _ in range(args.steps):
                    start = time.perf_counter()
                    step()
                    seconds.append(time.perf_counter() - start)
                with torch.no_grad():
                    final = -float(((model(X) - Y) ** 2).mean())
            except (ValueError, RuntimeError) as error:  # a diverged run (NaN fitness) is a result, not a crash
                final = f"diverged: {error}"[:120]
            if isinstance(final, float) and final != final:
                final = "diverged: nan"
            runs.append({"sigma": sigma, "lr": lr, "seed": seed, "final_fitness": final,
                         "median_step_s": statistics.median(seconds[1:]) if len(seconds) > 1 else None})
        return {"runs": runs}
    model, X, T = probe_problem()
    with torch.no_grad():
        model(X)  # warm-up of the kernels every library shares
    before = rss_mb()
    if args.worker == "plain":
        Xe, seconds = X.expand(POPULATION, *X.shape), []
        for _ in range(2):
            start = time.perf_counter()
            with torch.no_grad():
                model(Xe)
            seconds.append(time.perf_counter() - start)
    else:
        step, seconds = make_step(args.library, model, X, T, 0.01, 0.01, 0), []
        for _ in range(2):
            start = time.perf_counter()
            step()
            seconds.append(time.perf_counter() - start)
    return {"step_s": seconds, "peak_mb_above_start": peak_mb() - before}


def run_worker(kind: str, library: str | None, settings=None, steps: int = 50) -> dict:
    command = [sys.executable, __file__, "--worker", kind, "--steps", str(steps)]
    if library:
        command += ["--library", library]
    if settings is not None:
        command += ["--settings", json.dumps(settings)]
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{kind} worker for {library} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- the comparison

def best_setting(runs: list[dict]) -> dict:
    finite = [r for r in runs if isinstance(r["final_fitness"], float)]
    return max(finite, key=lambda r: r["final_fitness"])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return
    libraries, started = args.libraries, time.time()
    grids, best = {}, {}
    for library in libraries:  # grid on seed 0, one worker per library: coarse, then refined around its best
        settings = [[s, lr, 0] for s in SIGMAS for lr in LRS]
        coarse = run_worker("toy", library, settings, args.steps)["runs"]
        around = best_setting(coarse)
        settings = [[float(f"{around['sigma'] * a:.3g}"), float(f"{around['lr'] * b:.3g}"), 0]
                    for a in REFINE for b in REFINE if (a, b) != (1, 1)]
        grids[library] = coarse + run_worker("toy", library, settings, args.steps)["runs"]
        best[library] = best_setting(grids[library])
        print(f"grid {library}: best σ={best[library]['sigma']} lr={best[library]['lr']} "
              f"fitness {best[library]['final_fitness']:.4f}", flush=True)
    toy = {library: [] for library in libraries}
    for repeat in range(args.repeats):  # interleaved: every library once per round, the order rotating
        order = libraries[repeat % len(libraries):] + libraries[:repeat % len(libraries)]
        for library in order:
            settings = [[best[library]["sigma"], best[library]["lr"], seed] for seed in range(args.seeds)]
            toy[library] += run_worker("toy", library, settings, args.steps)["runs"]
    probe = {name: [] for name in ["plain", *libraries]}
    for repeat in range(args.repeats):
        for name in ["plain", *libraries][repeat % 2:] + ["plain", *libraries][:repeat % 2]:
            probe[name].append(run_worker("plain" if name == "plain" else "probe", None if name == "plain" else name))
    results = summarise(libraries, best, toy, probe)
    print(table(results))
    if args.json is not None:
        machine = {"processor": platform.processor() or platform.machine(), "platform": platform.platform(),
                   "cpu_count": os.cpu_count(), "torch_threads": 1, "python": platform.python_version(),
                   "packages": installed_versions()}
        config = {"steps": args.steps, "seeds": args.seeds, "repeats": args.repeats, "population": POPULATION,
                  "rank": RANK, "grid": {"sigma": SIGMAS, "lr": LRS, "refine_factors": REFINE},
                  "probe": "1024-4096-1024 ReLU MLP, 32 shared inputs, σ 0.01, lr 0.01, 2 steps",
                  "toy": "64-256-1 tanh MLP, 512 samples"}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"command": " ".join(["python", *sys.argv]), "config": config,
                                         "machine": machine, "wall_s": round(time.time() - started),
                                         "results": results, "grids": grids, "toy_runs": toy, "probe_runs": probe},
                                        indent=2) + "\n")
        print(f"wrote {args.json}")


def summarise(libraries, best, toy, probe) -> dict:
    plain = statistics.median(s for run in probe["plain"] for s in run["step_s"])
    out = {"plain_forward_s": plain, "toy": {}, "probe": {}}
    for library in libraries:
        finals = [r["final_fitness"] for r in toy[library] if isinstance(r["final_fitness"], float)]
        out["toy"][library] = {
            "sigma": best[library]["sigma"], "lr": best[library]["lr"],
            "final_fitness_mean": statistics.mean(finals) if finals else None,
            "final_fitness_std": statistics.pstdev(finals) if finals else None,
            "diverged_runs": len(toy[library]) - len(finals),
            "median_step_s": statistics.median(r["median_step_s"] for r in toy[library])}
        steps = list(zip(*(run["step_s"] for run in probe[library])))         # per step index, over repeats
        out["probe"][library] = {
            "step_s": [statistics.median(s) for s in steps],
            "step_over_plain_forward": [statistics.median(s) / plain for s in steps],
            "peak_mb_above_start": statistics.median(run["peak_mb_above_start"] for run in probe[library])}
    out["probe"]["plain"] = {"peak_mb_above_start": statistics.median(r["peak_mb_above_start"] for r in probe["plain"])}
    return out


def table(results: dict) -> str:
    lines = ["| library | σ | lr | toy final fitness | toy ms/step | probe step 1, 2 (s) | × plain forward | "
             "peak MB |", "|---|---|---|---|---|---|---|---|"]
    for library, toy in results["toy"].items():
        probe = results["probe"][library]
        fitness = "—" if toy["final_fitness_mean"] is None else \
            f"{toy['final_fitness_mean']:.4f} ± {toy['final_fitness_std']:.4f}"
        lines.append(f"| {library} | {toy['sigma']} | {toy['lr']} | {fitness} | {1e3 * toy['median_step_s']:.1f} | "
                     f"{', '.join(f'{s:.2f}' for s in probe['step_s'])} | "
                     f"{', '.join(f'{r:.2f}' for r in probe['step_over_plain_forward'])} | "
                     f"{probe['peak_mb_above_start']:.0f} |")
    lines.append(f"plain batched forward of the probe: {results['plain_forward_s']:.3f} s, "
                 f"peak {results['probe']['plain']['peak_mb_above_start']:.0f} MB")
    return "\n".join(lines)


def installed_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    found = {}
    for name in ["torch", *PEERS]:
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            found[name] = None
    return found


if __name__ == "__main__":
    main()
