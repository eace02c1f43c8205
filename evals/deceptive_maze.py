"""A deceptive point maze, where climbing the reward gets stuck and novelty search does not (evals/es_zoo.py).

A point robot starts at (0, 0) inside a cup that opens downwards (walls: the top y = 0.2 and the sides x = ±0.3,
from y = −0.3 to 0.2) in the arena [−1, 1]²; the goal is (0, 0.6), right above the cup. The policy is open loop:
T moves a_t = 0.1 · tanh(θ_t) (θ: [T, 2], the parameters the ES trains, zeros at the start), applied one axis at a
time so the robot slides along a wall instead of passing it. Reward −‖p_T − goal‖ pulls straight up into the cup's
top (reward −0.4, a local optimum); the way out goes down first, away from the goal. Behaviour: the final position
p_T, the descriptor of Conti et al. 2018's maze experiments.

    python evals/deceptive_maze.py      # prints the final position and reward of the zero policy and of a solution
"""

from __future__ import annotations

import math

import torch
from torch import nn

GOAL, SOLVED = (0.0, 0.6), 0.1        # solved: the centre ends within 0.1 of the goal
VERTICAL = ((-0.3, -0.3, 0.2), (0.3, -0.3, 0.2))   # (x, y_low, y_high)
HORIZONTAL = ((0.2, -0.3, 0.3),)                   # (y, x_low, x_high)
STEPS, SPEED = 50, 0.1


class OpenLoopPolicy(nn.Module):
    def __init__(self, steps: int = STEPS):
        super().__init__()
        self.actions = nn.Parameter(torch.zeros(steps, 2))


def blocked(a: float, b: float, wall: float, other: float, low: float, high: float) -> bool:
    """Does a move from a to b along one axis cross `wall` while the other coordinate lies in [low, high]?"""
    return low <= other <= high and (a - wall) * (b - wall) <= 0 and a != b


def final_position(actions: list[list[float]]) -> tuple[float, float]:
    x, y = 0.0, 0.0
    for ax, ay in actions:
        nx = min(1.0, max(-1.0, x + SPEED * math.tanh(ax)))
        if not any(blocked(x, nx, wx, y, lo, hi) for wx, lo, hi in VERTICAL):
            x = nx
        ny = min(1.0, max(-1.0, y + SPEED * math.tanh(ay)))
        if not any(blocked(y, ny, wy, x, lo, hi) for wy, lo, hi in HORIZONTAL):
            y = ny
    return x, y


class Maze:
    """reward_fn and behaviour_fn of a policy, sharing one simulation per parameter value."""

    def __init__(self):
        self._last: tuple[bytes, tuple[float, float]] | None = None

    def position(self, model: OpenLoopPolicy) -> tuple[float, float]:
        actions = model.actions.detach()
        key = actions.numpy().tobytes()
        if self._last is None or self._last[0] != key:
            self._last = (key, final_position(actions.tolist()))
        return self._last[1]

    def reward(self, model: OpenLoopPolicy) -> float:
        x, y = self.position(model)
        return -math.hypot(x - GOAL[0], y - GOAL[1])

    def behaviour(self, model: OpenLoopPolicy) -> torch.Tensor:
        return torch.tensor(self.position(model))


if __name__ == "__main__":
    maze, policy = Maze(), OpenLoopPolicy()
    print("zero policy:", maze.position(policy), maze.reward(policy))
    with torch.no_grad():   # down 4, right 4, up 10, left 4 (tanh(3) ≈ 1), then stay
        plan = [(0, -3)] * 4 + [(3, 0)] * 4 + [(0, 3)] * 10 + [(-3, 0)] * 4 + [(0, 0)] * 28
        policy.actions.copy_(torch.tensor(plan, dtype=torch.float32))
    print("around the cup:", maze.position(policy), maze.reward(policy))
