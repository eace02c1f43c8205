"""Novelty search for the generic ES layer: NS-ES, NSR-ES and NSRA-ES (Conti et al. 2018, arXiv 1712.06560).

Reward alone leads an ES into deceptive local optima (a maze's dead end nearest the goal). Novelty search scores a
member by how far its behaviour lies from the behaviours seen so far: a user `behaviour_fn(model) -> tensor` (e.g.
an agent's final position) and an archive of past behaviours give

    novelty(b) = mean distance from b to its k nearest neighbours in the archive      (paper §2.3, k = 10)

and the fitness the ES climbs is a transform of reward and novelty (§3), each turned into centred ranks first:

- `ns`:   novelty alone (NS-ES);
- `nsr`:  the mean of the two (NSR-ES);
- `nsra`: w · reward + (1 − w) · novelty (NSRA-ES): w starts at `weight` (1) and drops by `weight_step` (0.05)
          after `patience` (10) steps without a new best centre reward, towards novelty; it rises by `weight_step`
          whenever the centre's reward improves.

After every update the centre's behaviour joins the archive (the paper adds one per generation and agent). The
paper's meta-population of M agents is left to the caller: one NoveltySearch per agent, all given the same
`archive=`, and each generation the caller steps the agent it picks (the paper: with probability proportional to
the novelty of its centre, `archive.novelty`). One search alone is M = 1.

    es = EggrollES(model, population_size=32, sigma=0.1, lr=0.05, strategy="openai_es", fitness="none")
    search = NoveltySearch(es, behaviour_fn, reward_fn, method="nsra")
    for step in range(200):
        metrics = search.step()            # or search.tell(rewards [N], behaviours [N, b]) after batched scoring

`search.state_dict()` holds the ES object's state and the search's own (archive, w, best reward) for an exact resume.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from .fitness import centered_rank_fitness

METHODS = ("ns", "nsr", "nsra")


class NoveltyArchive:
    """Behaviours seen so far ([size, b] fp32) and the k-nearest-neighbour novelty of new ones."""

    def __init__(self, k: int = 10):
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k (nearest neighbours) must be a positive int, got {k!r}")
        self.k = k
        self.behaviours: Tensor | None = None

    def __len__(self) -> int:
        return 0 if self.behaviours is None else self.behaviours.shape[0]

    def add(self, behaviour: Tensor) -> None:
        """Add one behaviour [b] (or several [n, b])."""
        b = torch.as_tensor(behaviour, dtype=torch.float32).detach().cpu()
        b = b.reshape(1, -1) if b.dim() <= 1 else b.reshape(b.shape[0], -1)                        # [n, b]
        if self.behaviours is not None and b.shape[1] != self.behaviours.shape[1]:
            raise ValueError(f"behaviour has {b.shape[1]} numbers, the archive's have {self.behaviours.shape[1]}; "
                             "behaviour_fn must return the same shape every time")
        self.behaviours = b if self.behaviours is None else torch.cat([self.behaviours, b])

    def novelty(self, behaviours: Tensor) -> Tensor:
        """Mean Euclidean distance of each behaviour [n, b] to its min(k, size) nearest archived ones → [n]."""
        if self.behaviours is None:
            raise ValueError("the novelty archive is empty: add at least one behaviour (the start's) first")
        distances = torch.cdist(behaviours.to(torch.float32).reshape(behaviours.shape[0], -1), self.behaviours)
        k = min(self.k, len(self))
        return distances.topk(k, dim=1, largest=False).values.mean(dim=1)


class NoveltySearch:
    """NS-ES / NSR-ES / NSRA-ES over an EggrollES: the ES climbs a transform of reward and novelty (module doc).

    Build the ES with `fitness="none"`: the transform already gives centred ranks. `reward_fn(model) -> float` and
    `behaviour_fn(model) -> tensor` are called on the model holding one member (`step`) or the centre (after each
    update, for the archive and NSRA's weight). `archive`: a NoveltyArchive to share with other agents (its own k
    then applies; default a new one with `k`).
    """

    def __init__(self, es, behaviour_fn: Callable[[nn.Module], Tensor], reward_fn: Callable[[nn.Module], float],
                 method: str = "nsra", k: int = 10, weight: float = 1.0, weight_step: float = 0.05,
                 patience: int = 10, archive: NoveltyArchive | None = None):
        if method not in METHODS:
            raise ValueError(f"novelty method must be one of {', '.join(METHODS)}, got {method!r}")
        if not 0 <= weight <= 1 or not 0 <= weight_step <= 1 or patience < 1:
            raise ValueError(f"NSRA needs weight and weight_step in [0, 1] and patience >= 1, got {weight}, "
                             f"{weight_step}, {patience}")
        self.es, self.behaviour_fn, self.reward_fn, self.method = es, behaviour_fn, reward_fn, method
        self.archive = NoveltyArchive(k) if archive is None else archive     # shared by a meta-population's agents
        self.weight, self.weight_step, self.patience = weight, weight_step, patience
        self.best, self.stale = float("-inf"), 0
        self._observe_centre()

    def fitness(self, rewards: Tensor, novelty: Tensor) -> Tensor:
        """The transform of reward [N] and novelty [N] the ES climbs, as centred ranks of each → [N]."""
        r = centered_rank_fitness(rewards.reshape(-1, 1).to(torch.float32))
        n = centered_rank_fitness(novelty.reshape(-1, 1).to(torch.float32))
        w = {"ns": 0.0, "nsr": 0.5, "nsra": self.weight}[self.method]
        return w * r + (1 - w) * n

    def step(self) -> dict[str, float]:
        """Score every member's reward and behaviour (one write of its parameters each), then `tell`."""
        es = self.es
        population = es.ask()
        rewards, behaviours = [], []
        with es.members() as apply, torch.no_grad():
            for member in range(population.population_size):
                apply(member)
                rewards.append(float(self.reward_fn(es.model)))
                behaviours.append(torch.as_tensor(self.behaviour_fn(es.model), dtype=torch.float32).reshape(-1))
        return self.tell(torch.tensor(rewards), torch.stack(behaviours))

    def tell(self, rewards: Tensor, behaviours: Tensor) -> dict[str, float]:
        """Update the ES on the transformed fitness of rewards [N] and behaviours [N, b], then archive the new
        centre's behaviour and adapt NSRA's weight from its reward."""
        novelty = self.archive.novelty(behaviours.reshape(behaviours.shape[0], -1))
        stats = self.es.tell(self.fitness(rewards, novelty))
        centre_reward = self._observe_centre()
        return {"reward_mean": float(rewards.mean()), "reward_max": float(rewards.max()),
                "novelty_mean": float(novelty.mean()), "centre_reward": centre_reward, "weight": self.weight,
                "archive_size": len(self.archive), **stats}

    @torch.no_grad()
    def _observe_centre(self) -> float:
        self.archive.add(torch.as_tensor(self.behaviour_fn(self.es.model), dtype=torch.float32).reshape(-1))
        reward = float(self.reward_fn(self.es.model))
        if reward > self.best:          # NSRA (Conti et al. §3): more reward pressure while the reward improves
            self.best, self.stale = reward, 0
            if self.method == "nsra" and len(self.archive) > 1:
                self.weight = min(1.0, self.weight + self.weight_step)
        else:
            self.stale += 1
            if self.method == "nsra" and self.stale >= self.patience:
                self.weight, self.stale = max(0.0, self.weight - self.weight_step), 0
        return reward

    def state_dict(self) -> dict[str, Tensor]:
        return {**self.es.state_dict(), "novelty.archive": self.archive.behaviours.clone(),
                "novelty.weight": torch.tensor(self.weight, dtype=torch.float64),
                "novelty.best": torch.tensor(self.best, dtype=torch.float64), "novelty.stale": torch.tensor(self.stale)}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.es.load_state_dict(state)
        self.archive.behaviours = state["novelty.archive"].clone()
        self.weight, self.best = float(state["novelty.weight"]), float(state["novelty.best"])
        self.stale = int(state["novelty.stale"])
