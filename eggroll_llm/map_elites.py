"""MAP-Elites with the generic ES as its emitter (ME-ES, Colas et al. 2020, arXiv 2003.01825), over a `ribs` archive.

Quality diversity: instead of one best solution, keep the best solution found for every cell of a grid over the
behaviour descriptor (the `behaviour_fn(model) -> tensor` of novelty.py). `ribs` (pyribs) holds the archive and
does the insertion; this module is the glue:

- every member the ES scores goes into the archive with its reward as objective and its behaviour as measures;
- the ES climbs reward from its current centre (ME-ES's exploitation emitter), and every `restart` steps the centre
  jumps to an elite drawn uniformly from the archive (a fresh optimizer state with it), which spreads the search over
  the whole grid.

    from ribs.archives import GridArchive                              # pip install "eggroll-llm[strategies]"
    archive = GridArchive(solution_dim=es.trained_numel(), dims=[20, 20], ranges=[(-1, 1), (-1, 1)])
    search = MapElites(es, archive, behaviour_fn, reward_fn, restart=20)
    for step in range(1000):
        metrics = search.step()            # {"reward_max", "elites", "coverage", "best", ...}

Works in place (a solution is the target parameters, flattened in `es.targets` order). The elite drawn at a restart
comes from a generator keyed by (seed, step), and `state_dict()` saves the archive's elites, so a resumed search
continues exactly.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor, nn

from .noise import noise_seed


class MapElites:
    """MAP-Elites over `archive` (a ribs archive of solution_dim = the ES's trained_numel), the ES as emitter."""

    def __init__(self, es, archive, behaviour_fn: Callable[[nn.Module], Tensor],
                 reward_fn: Callable[[nn.Module], float], restart: int = 20):
        if not es.in_place:
            raise ValueError("MapElites stores the target parameters as solutions: build the ES in place "
                             "(adapter_rank=None)")
        if archive.solution_dim != es.trained_numel():
            raise ValueError(f"the archive's solution_dim is {archive.solution_dim}, the ES trains "
                             f"{es.trained_numel()} numbers: build it with solution_dim=es.trained_numel()")
        if restart < 1:
            raise ValueError(f"restart (steps between jumps to an elite) must be >= 1, got {restart}")
        self.es, self.archive, self.behaviour_fn, self.reward_fn, self.restart = (es, archive, behaviour_fn,
                                                                                 reward_fn, restart)

    def solution(self) -> np.ndarray:
        return torch.cat([t.param.detach().reshape(-1).double().cpu() for t in self.es.targets.values()]).numpy()

    @torch.no_grad()
    def load_solution(self, x: np.ndarray) -> None:
        start = 0
        for t in self.es.targets.values():
            n = t.param.numel()
            t.param.copy_(torch.from_numpy(x[start:start + n]).view(t.shape).to(t.param.dtype))
            start += n

    def step(self) -> dict[str, float]:
        """Score every member (reward, behaviour, parameters), insert them all, update the ES on reward; every
        `restart` steps move the centre to a random elite."""
        es = self.es
        population = es.ask()
        rewards, behaviours, solutions = [], [], []
        with es.members() as apply, torch.no_grad():
            for member in range(population.population_size):
                apply(member)
                rewards.append(float(self.reward_fn(es.model)))
                behaviours.append(np.asarray(torch.as_tensor(self.behaviour_fn(es.model)).reshape(-1), np.float64))
                solutions.append(self.solution())
        self.archive.add(np.stack(solutions), np.asarray(rewards), np.stack(behaviours))
        stats = es.tell(torch.tensor(rewards))
        if es.step_index % self.restart == 0:
            self.jump()
        return {"reward_mean": float(np.mean(rewards)), "reward_max": max(rewards), "elites": len(self.archive),
                "coverage": float(self.archive.stats.coverage), "best": float(self.archive.stats.obj_max), **stats}

    def jump(self) -> None:
        """Centre ← an elite drawn uniformly (generator keyed by the ES seed and step); the optimizer restarts."""
        elites = self.archive.data("solution")
        g = torch.Generator().manual_seed(noise_seed(self.es.population.seed, self.es.step_index, 1, -1))
        self.load_solution(elites[int(torch.randint(len(elites), (1,), generator=g))])
        self.es.optimizer.state = {}

    def state_dict(self) -> dict[str, Tensor]:
        data = self.archive.data()
        return {**self.es.state_dict(), **{f"archive.{k}": torch.from_numpy(np.asarray(data[k]))
                                           for k in ("solution", "objective", "measures")}}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.es.load_state_dict(state)
        self.archive.clear()
        if state["archive.solution"].shape[0]:
            self.archive.add(state["archive.solution"].numpy(), state["archive.objective"].numpy(),
                             state["archive.measures"].numpy())
