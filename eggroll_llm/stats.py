"""The statistics behind `eggroll-llm compare`: intervals over seeds, paired tests over problems, curve areas.

Pure functions, no I/O. docs/compare.md says how each figure of a report is computed and how to read it.

- `mean_interval`: mean and Student-t 95% interval over seeds (one seed: no interval).
- `bootstrap_interval`: percentile bootstrap of a mean over problems, seeded, a fixed number of resamples.
- `mcnemar_exact`: the exact (binomial) McNemar test on the discordant pairs of two paired 0/1 outcomes.
- `normalised_area`: the area under a piecewise-linear curve over [0, upper], divided by upper.
- `pick_winner`: the best of several intervals, and whether it clears all the others.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def _t_central_mass(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with integer `df` degrees of freedom, t >= 0.

    The closed forms of Abramowitz & Stegun 26.7.3 (odd df) and 26.7.4 (even df), with θ = atan(t / √df): a finite
    series in cos²θ, exact for the integer df that seed counts give.
    """
    theta = math.atan(t / math.sqrt(df))
    cos2 = math.cos(theta) ** 2
    if df % 2 == 0:  # sinθ · (1 + 1/2 cos²θ + 1·3/(2·4) cos⁴θ + … up to cos^(df-2)θ)
        term, total = 1.0, 1.0
        for k in range(1, df // 2):
            term *= cos2 * (2 * k - 1) / (2 * k)
            total += term
        return math.sin(theta) * total
    if df == 1:
        return 2 * theta / math.pi
    term = math.cos(theta)  # 2/π · (θ + sinθ · (cosθ + 2/3 cos³θ + … up to cos^(df-2)θ))
    total = term
    for k in range(1, (df - 1) // 2):
        term *= cos2 * (2 * k) / (2 * k + 1)
        total += term
    return 2 / math.pi * (theta + math.sin(theta) * total)


def t_quantile(p: float, df: int) -> float:
    """The p-quantile of Student's t with integer df (p in (0.5, 1)): bisection on the exact central mass."""
    if not 0.5 < p < 1 or df < 1:
        raise ValueError(f"t_quantile needs 0.5 < p < 1 and df >= 1, got p={p}, df={df}")
    mass = 2 * p - 1  # P(|T| <= t) = 2p - 1 for the p-quantile t
    low, high = 0.0, 1.0
    while _t_central_mass(high, df) < mass:
        high *= 2
    for _ in range(200):
        mid = (low + high) / 2
        low, high = (mid, high) if _t_central_mass(mid, df) < mass else (low, mid)
        if high - low <= 1e-12 * high:
            break
    return (low + high) / 2


@dataclass(frozen=True)
class Interval:
    """A mean over `n` values with its interval; low and high are None when n < 2 (no spread to measure)."""

    mean: float | None
    low: float | None
    high: float | None
    n: int
    values: tuple[float, ...]

    @property
    def half_width(self) -> float | None:
        return None if self.low is None else (self.high - self.low) / 2

    def overlaps(self, other: Interval) -> bool:
        return self.low <= other.high and other.low <= self.high

    def as_dict(self) -> dict:
        return {**asdict(self), "values": list(self.values), "half_width": self.half_width}


def mean_interval(values: Sequence[float], confidence: float = CONFIDENCE) -> Interval:
    """Mean and two-sided t-interval: mean ± t_{(1+c)/2, n-1} · s / √n, s the sample standard deviation (n - 1).

    The t-interval assumes the per-seed values are roughly normal; with 3-5 seeds nothing better is identifiable,
    and the t quantile (12.7 at n = 2, 4.30 at n = 3) already widens the interval for how little is known.
    """
    values = tuple(float(v) for v in values)
    n = len(values)
    if n == 0:
        return Interval(None, None, None, 0, ())
    mean = sum(values) / n
    if n == 1:
        return Interval(mean, None, None, 1, values)
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    half = t_quantile((1 + confidence) / 2, n - 1) * sd / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, values)


def bootstrap_interval(values: Sequence[float], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED,
                       confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (e.g. per-problem differences), resampling values.

    Seeded and with a fixed number of resamples, so the same inputs always give the same interval.
    """
    data = np.asarray(values, dtype=np.float64)  # [n]
    if data.size == 0:
        raise ValueError("bootstrap_interval needs at least one value")
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    chunk = max(1, 2**22 // data.size)  # ~32 MB of indices at a time, whatever the number of problems
    for start in range(0, resamples, chunk):
        stop = min(start + chunk, resamples)
        means[start:stop] = data[rng.integers(0, data.size, size=(stop - start, data.size))].mean(axis=1)
    alpha = 1 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return float(low), float(high)


def mcnemar_exact(only_first: int, only_second: int) -> float:
    """Two-sided exact McNemar p-value: under no difference, each discordant pair favours either side with 1/2.

    `only_first` problems are right for the first system only, `only_second` for the second only. The p-value is
    2·P(X <= min(b, c)) for X ~ Binomial(b + c, 1/2), capped at 1; with no discordant pair it is 1.
    """
    if only_first < 0 or only_second < 0:
        raise ValueError(f"discordant counts must be >= 0, got {only_first}, {only_second}")
    n = only_first + only_second
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_first, only_second) + 1))
    return min(1.0, 2 * tail / 2**n)


def normalised_area(x: Sequence[float], y: Sequence[float], upper: float) -> float:
    """∫₀^upper y(x) dx / upper for the piecewise-linear curve through (x, y): the curve's mean height on [0, upper].

    x is increasing and starts at 0 (the evaluation before training); the curve is cut at `upper` by linear
    interpolation. Normalising by the span makes areas over different budget axes read as accuracies.
    """
    if upper <= 0:
        raise ValueError(f"the budget span must be > 0, got {upper}")
    if x[0] > 0 or x[-1] < upper:
        raise ValueError(f"the curve covers [{x[0]}, {x[-1]}], not [0, {upper}]")
    xs = [v for v in x if v < upper] + [upper]
    ys = np.interp(xs, x, y)
    return float(sum((x1 - x0) * (y0 + y1) / 2 for x0, x1, y0, y1 in zip(xs, xs[1:], ys, ys[1:])) / upper)


def pick_winner(intervals: dict[str, Interval], higher: bool, eligible: set[str] | None = None) -> dict:
    """The leader (best mean among the `eligible` names, default all) and whether its interval clears every other.

    `winner` is the leader only when it does: non-overlapping 95% intervals are a conservative test (a difference
    they show has p well under 0.05). Where intervals overlap the verdict is "no significant difference", and with
    one value (one seed) there is no interval to test. An ineligible interval with a better mean than the leader's
    leaves the order undecided (compare.py: groups with seeds that never reach the target, counted at their total
    budgets, stopped before the leader got there). Intervals without values take no part.
    """
    if len(intervals) < 2:
        return {"leader": None, "winner": None, "verdict": "one group: nothing to compare"}
    found = {g: iv for g, iv in intervals.items() if iv.mean is not None}
    candidates = [g for g in found if eligible is None or g in eligible]
    if not candidates:
        return {"leader": None, "winner": None, "verdict": "no group qualifies"}
    leader = (max if higher else min)(candidates, key=lambda g: found[g].mean)
    best, others = found[leader], [iv for g, iv in found.items() if g != leader]
    if any(iv.mean == best.mean for iv in others):
        return {"leader": None, "winner": None, "verdict": "tied"}
    if any(iv.mean > best.mean if higher else iv.mean < best.mean for iv in others):
        return {"leader": None, "winner": None, "verdict": "undecided: runs that never reach it stopped sooner"}
    if any(iv.n < 2 for iv in [best, *others]):
        return {"leader": leader, "winner": None, "verdict": "one seed: not tested"}
    clear = all(best.low > iv.high if higher else best.high < iv.low for iv in others)
    return {"leader": leader, "winner": leader if clear else None,
            "verdict": "significant" if clear else "no significant difference"}
