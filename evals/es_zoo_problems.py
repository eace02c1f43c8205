"""The problems of evals/es_zoo.py and how each library runs them: one function per (library, part), each taking a
job (a dict: problem, strategy, seed, sizes) and returning {"final", "s_per_generation", "cpu_s_per_generation",
...} for one run.

Every library goes through its own public API at the same settings (module doc of es_zoo.py): ours through
`EggrollES`, evosax through jitted ask/tell, EvoTorch through a vectorised `Problem`, pyribs through its own
`Scheduler` with a `GaussianEmitter` (classic MAP-Elites). Imports of a library stay inside its functions, so a
worker loads only the library it runs.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHIFT, SIGMA0, OPENAI_SIGMA, OPENAI_LR = 1.5, 0.5, 0.1, 0.01
DIMS = {10: (10, 300), 1000: (24, 1000)}                     # d -> (population, generations)
DIGITS = {"population": 64, "batch": 128, "generations": 300, "sigma": 0.03, "strategies": ("snes", "cma_es")}
MAZE = {"population": 32, "sigma": 0.5, "lr": 0.1, "generations": 1000, "methods": ("reward", "ns", "nsr", "nsra"),
        "agents": 5}
QD = {"population": 32, "sigma": 0.5, "lr": 0.1, "generations": 500, "cells": 20, "restart": 20}


def loss(problem: str, x, xp):
    """Rows of x [n, d] (torch or jax.numpy, `xp` its module) → loss [n]; minimum 0."""
    if problem == "sphere":
        return ((x - SHIFT) ** 2).sum(-1)
    if problem == "rastrigin":
        z = x - SHIFT
        return (z * z - 10 * xp.cos(2 * math.pi * z) + 10).sum(-1)
    return (100 * (x[..., 1:] - x[..., :-1] ** 2) ** 2 + (1 - x[..., :-1]) ** 2).sum(-1)


def timed(generation, generations: int) -> dict[str, float]:
    """Run generation(g) for g < generations → the median wall-clock and CPU seconds of one (the median is robust
    to a compile or a busy moment; CPU time, of this one-thread process, to other jobs on a shared machine)."""
    wall, cpu = [], []
    for g in range(generations):
        start, start_cpu = time.perf_counter(), time.process_time()
        generation(g)
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return {"s_per_generation": statistics.median(wall), "cpu_s_per_generation": statistics.median(cpu)}


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

    return {**timed(lambda g: es.step(fitness), G), "final": -fitness(model)}


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
    """Run `generations` jitted ask/evaluate/tell generations from `mean` → (state, timed(); the first two
    compile)."""
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

    return run["state"], timed(one, generations)


def evosax_function(job: dict) -> dict:
    import jax.numpy as jnp

    es, params = evosax_algorithm(job["strategy"], job["d"], job["population"], SIGMA0)
    state, s = evosax_run(es, params, jnp.zeros(job["d"]), job["seed"], job["generations"],
                          lambda X, _: loss(job["problem"], X, jnp))
    return {"final": float(loss(job["problem"], state.mean[None], jnp)[0]), **s}


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
    return {"final": float(loss(job["problem"], torch.as_tensor(centre)[None], torch)), **seconds}


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
    return {"final": accuracy(model, "mlp", Xt.view(-1, 1, 8, 8), yt), **seconds}


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
    return {"final": accuracy, **seconds}


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
    return {"final": float((logits.argmax(-1) == jnp.asarray(yt.numpy())).mean()), **s}


# --- the deceptive maze: novelty search (ours) and MAP-Elites (ours and pyribs) -----------------------------------

def maze_es(seed: int, shaping: str):
    from deceptive_maze import OpenLoopPolicy

    from eggroll_llm.es import EggrollES

    policy = OpenLoopPolicy()
    return policy, EggrollES(policy, population_size=MAZE["population"], sigma=MAZE["sigma"], lr=MAZE["lr"],
                             strategy="openai_es", optimizer="adam", seed=seed, fitness=shaping)


def ours_maze(job: dict) -> dict:
    """Reward-only OpenAI-ES or NS / NSR / NSRA-ES on one agent; `nsra-m5`: NSRA-ES with the paper's meta-population
    (M agents sharing one archive, each generation one agent stepped, picked with probability proportional to its
    centre's novelty; Conti et al. 2018 §2.3, M = 5 and k = 10 as the authors' configurations). Every variant spends
    the same evaluations: one population per generation."""
    import torch
    from deceptive_maze import SOLVED, Maze

    from eggroll_llm.novelty import NoveltyArchive, NoveltySearch

    maze, method = Maze(), job["strategy"]
    agents = MAZE["agents"] if method == "nsra-m5" else 1
    ess = [maze_es(job["seed"] * agents + a, "centered_rank" if method == "reward" else "none")
           for a in range(agents)]
    archive = NoveltyArchive(k=10)
    searches = None if method == "reward" else [
        NoveltySearch(es, maze.behaviour, maze.reward, method=method.split("-")[0], archive=archive) for _, es in ess]
    pick = torch.Generator().manual_seed(job["seed"])
    run = {"best": maze.reward(ess[0][0]), "first": None}

    def one(g: int) -> None:
        if searches is None:
            ess[0][1].step(maze.reward)
            reward = maze.reward(ess[0][0])
        else:
            agent = 0
            if agents > 1:
                novelty = archive.novelty(torch.stack([maze.behaviour(policy) for policy, _ in ess]))
                agent = int(torch.multinomial(novelty + 1e-12, 1, generator=pick))
            reward = searches[agent].step()["centre_reward"]
        run["best"] = max(run["best"], reward)
        if run["first"] is None and run["best"] >= -SOLVED:
            run["first"] = g + 1

    seconds = timed(one, job["generations"])
    return {"final": run["best"], "solved": run["best"] >= -SOLVED, "first_solved": run["first"], **seconds}


def qd_archive(seed: int):
    from deceptive_maze import STEPS
    from ribs.archives import GridArchive

    return GridArchive(solution_dim=2 * STEPS, dims=[QD["cells"]] * 2, ranges=[(-1, 1), (-1, 1)], seed=seed)


def qd_result(archive, seconds: dict) -> dict:
    from deceptive_maze import SOLVED

    best = float(archive.stats.obj_max)
    return {"final": float(archive.stats.coverage), "best": best, "solved": best >= -SOLVED, **seconds}


def ours_qd(job: dict) -> dict:
    """MAP-Elites with our ES as emitter (eggroll_llm.map_elites, ME-ES): behaviour = final position on a 20 × 20
    grid, objective = reward; the centre jumps to a random elite every `restart` generations."""
    from deceptive_maze import Maze

    from eggroll_llm.map_elites import MapElites

    maze, (_, es) = Maze(), maze_es(job["seed"], "centered_rank")
    search = MapElites(es, qd_archive(job["seed"]), maze.behaviour, maze.reward, restart=QD["restart"])
    return qd_result(search.archive, timed(lambda g: search.step(), job["generations"]))


def ribs_qd(job: dict) -> dict:
    """Classic MAP-Elites in pyribs: a GaussianEmitter (elites + σ Gaussian noise, the population per generation)
    over the same grid, through its own Scheduler ask/tell."""
    import numpy as np
    from deceptive_maze import GOAL, STEPS, final_position
    from ribs.emitters import GaussianEmitter
    from ribs.schedulers import Scheduler

    archive = qd_archive(job["seed"])
    emitter = GaussianEmitter(archive, sigma=QD["sigma"], x0=np.zeros(2 * STEPS), batch_size=QD["population"],
                              seed=job["seed"])
    scheduler = Scheduler(archive, [emitter])

    def one(g: int) -> None:
        solutions = scheduler.ask()
        ends = np.array([final_position(x.reshape(STEPS, 2).tolist()) for x in solutions])
        scheduler.tell(-np.hypot(ends[:, 0] - GOAL[0], ends[:, 1] - GOAL[1]), ends)

    return qd_result(archive, timed(one, job["generations"]))


RUNNERS = {("eggroll_llm", "functions"): ours_function, ("evosax", "functions"): evosax_function,
           ("evotorch", "functions"): evotorch_function, ("eggroll_llm", "digits"): ours_digits,
           ("evosax", "digits"): evosax_digits, ("evotorch", "digits"): evotorch_digits,
           ("eggroll_llm", "maze"): ours_maze, ("eggroll_llm", "qd"): ours_qd, ("ribs", "qd"): ribs_qd}

