"""ES strategies for the generic layer: how members are sampled around the centre, and how fitness becomes a step.

A strategy is the part of an evolution strategy that differs between methods, in the ask/tell style of evosax:

- `noise(target, key, num_pairs)` samples the P perturbation directions ε_k of one parameter as a pure function of
  its key (seed, step // noise_reuse, parameter index; noise.py), so every process and every pass regenerates them;
- `weights(fitness, pairs, signs, num_pairs)` turns member fitness into one weight per direction;
- `gradient(target, noise, weights)` turns those into the ascent direction g of the parameter.

Member i scores the parameter θ + s_i σ ε_{k(i)} (s_i = ±1: antithetic partners share ε_k). The defaults give the
ES gradient estimate with 1/σ divided out (docs/design.md §1),

    g = 1/N Σ_i f_i s_i ε_{k(i)} = Σ_k w_k ε_k,     w_k = 1/N Σ_{i in pair k} f_i s_i,

and the ES object (es.EggrollES) applies lr, momentum and weight decay. A direction is one of two kinds, which the
batched forward (es_layers.py) knows how to apply without building any member's weights:

- `LowRankNoise(A [P, m, r], B [P, n, r])`: ε_k = A_k B_kᵀ / √r on the parameter's matrix view [m, n] (the 1/√r
  keeps each entry's variance at 1 whatever the rank);
- `DenseNoise(E [P, *shape])`: ε_k = E_k.

`EggrollStrategy` (EGGROLL, arXiv 2511.16652) draws low-rank directions for matrices (Linear and Embedding weights,
conv kernels viewed as [out, in·k…]) and dense Gaussian ones for everything else (biases, norm weights);
`OpenAIStrategy` draws dense Gaussian directions everywhere (full-parameter ES). The classic family adapts its search
distribution through the state hooks of `Strategy` (setup / update / state_dict): `simple_es` and `snes`
(classic.py, per-parameter σ) and `cma_es` (cma_es.py, through the `cmaes` library). `STRATEGIES` maps the names a
recipe or `EggrollES(strategy=...)` takes to these classes. A new strategy subclasses `Strategy`:

    class Rademacher(Strategy):                      # ±1 directions instead of Gaussian ones
        def noise(self, target, key, num_pairs):
            g = torch.Generator(target.param.device).manual_seed(key)
            E = torch.randint(0, 2, (num_pairs, *target.shape), generator=g, device=target.param.device)
            return DenseNoise(2.0 * E - 1.0)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, Union

import torch
from torch import Tensor, nn

from .fitness import antithetic_coefficients
from .importing import import_object
from .noise import layer_noise


@dataclass(eq=False)
class Target:
    """One parameter the ES perturbs. `index` is its place in the noise key; `matrix` the [m, n] view that low-rank
    noise factors (2-D weights as they are, conv kernels as [out, in·k…]), None for other shapes. `scale` multiplies
    σ and the step for this parameter alone (1, or RMS of the weight with sigma_scale "weight_rms").

    In place, `param` is θ itself; in adapter mode it is the frozen base weight W, and θ is the adapter ΔW beside it
    (the member's W + ΔW + s σ ε is what the forward sees either way)."""

    name: str
    index: int
    param: nn.Parameter
    matrix: tuple[int, int] | None
    scale: float = 1.0

    @property
    def shape(self) -> torch.Size:
        return self.param.shape


class LowRankNoise(NamedTuple):
    """ε_k = A_k B_kᵀ / √r on a target's [m, n] matrix view. A: [P, m, r], B: [P, n, r], fp32."""

    A: Tensor
    B: Tensor


class DenseNoise(NamedTuple):
    """ε_k = E_k. E: [P, *shape], fp32."""

    E: Tensor


Noise = Union[LowRankNoise, DenseNoise]


def gaussian(target: Target, key: int, num_pairs: int) -> DenseNoise:
    """Dense standard-normal directions [P, *shape], one draw per parameter from its key."""
    device = target.param.device
    generator = torch.Generator(device=device).manual_seed(key)
    return DenseNoise(torch.randn(num_pairs, *target.shape, generator=generator, device=device, dtype=torch.float32))


def member_noise(target: Target, noise: Noise, pair: int) -> Tensor:
    """ε_pair materialised in the parameter's shape, fp32 (for the per-member scoring path and for tests)."""
    if isinstance(noise, DenseNoise):
        return noise.E[pair]
    A, B = noise
    return (A[pair] @ B[pair].T / math.sqrt(A.shape[-1])).view(target.shape)       # [m, n] -> shape


def weighted_sum(target: Target, noise: Noise, weights: Tensor) -> Tensor:
    """Σ_k w_k ε_k in the parameter's shape, fp32, without materialising any ε_k. weights: [P]."""
    if isinstance(noise, DenseNoise):
        return torch.tensordot(weights.to(noise.E.device), noise.E, dims=1)           # [*shape]
    A = noise.A
    return lowrank_sum(target, noise, weights.to(A.device) / math.sqrt(A.shape[-1]))


def lowrank_sum(target: Target, noise: LowRankNoise, coeffs: Tensor) -> Tensor:
    """Σ_k c_k A_k B_kᵀ in the parameter's shape, fp32 (c: [P]): one [m, P r] @ [P r, n] matmul."""
    A, B = noise                                                                      # [P, m, r], [P, n, r]
    P, m, r = A.shape
    n = B.shape[1]
    left = (A * coeffs[:, None, None]).permute(1, 0, 2).reshape(m, P * r)
    right = B.permute(1, 0, 2).reshape(n, P * r)
    return (left @ right.T).view(target.shape)


def checked_noise(strategy: Strategy, target: Target, key: int, num_pairs: int) -> Noise:
    """strategy.noise(...), checked where it enters: a kind the forward can apply, shaped for this parameter."""
    noise = strategy.noise(target, key, num_pairs)
    name = type(strategy).__name__
    if isinstance(noise, LowRankNoise):
        A, B = noise
        if target.matrix is None or A.dim() != 3 or B.dim() != 3 or A.shape[0] != num_pairs \
                or (A.shape[1], B.shape[1]) != target.matrix or A.shape[0] != B.shape[0] or A.shape[2] != B.shape[2]:
            raise ValueError(f"{name}.noise gave low-rank factors A {tuple(A.shape)}, B {tuple(B.shape)} for "
                             f"{target.name} (matrix view {target.matrix}); expected A [{num_pairs}, m, r], "
                             "B [P, n, r] on a matrix parameter")
    elif isinstance(noise, DenseNoise):
        if noise.E.shape != (num_pairs, *target.shape):
            raise ValueError(f"{name}.noise gave E {tuple(noise.E.shape)} for {target.name}; expected "
                             f"{(num_pairs, *target.shape)}")
    else:
        raise TypeError(f"{name}.noise must return LowRankNoise or DenseNoise, got {type(noise).__name__}")
    return noise


class Strategy:
    """Base class of ES strategies; override `noise` (required) and, for another estimator, `weights` / `gradient`.

    EGGROLL and OpenAI-ES hold no state between steps: the ES object owns the step, the optimizer state and the
    parameters, so the strategy stays a pair of pure functions that any process can re-run from the same key and
    fitness. A strategy that adapts its search distribution (per-parameter σ, a covariance, an archive; the classic
    family of classic.py and cma_es.py) also overrides the state hooks, which the ES object calls:

    - `setup(es)` once, when `EggrollES(strategy=...)` is built: check the settings and allocate the state;
    - `update(fitness)` in every `tell`, after fitness shaping and before the centre moves, while
      `population.noise(target)` still holds the step's directions: adapt the state;
    - `state_dict()` / `load_state_dict(state)`: the state as tensors, saved under `strategy.` in the ES object's
      own state dict, so a checkpoint resumes exactly.

    `antithetic` is the strategy's default for `EggrollES(antithetic=None)`: mirrored pairs ±ε_k, or independent
    samples (the classic strategies' textbook sampling).
    """

    antithetic: bool = True

    def setup(self, es) -> None:
        """Check `es` (an eggroll_llm.es.EggrollES) suits this strategy and allocate its state; default nothing."""

    def update(self, fitness: Tensor) -> None:
        """Adapt the state to this step's shaped fitness [N] (members in population order); default nothing."""

    def state_dict(self) -> dict[str, Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what `state_dict` returned (keys without the ES object's `strategy.` prefix)."""

    def noise(self, target: Target, key: int, num_pairs: int) -> Noise:
        """The P directions ε_k of `target` at this step, a pure function of `key`, on the parameter's device."""
        raise NotImplementedError(f"{type(self).__name__} must define noise(target, key, num_pairs)")

    def weights(self, fitness: Tensor, pairs: Tensor, signs: Tensor, num_pairs: int) -> Tensor:
        """w_k = 1/N Σ_{i in pair k} f_i s_i → [P]: the weight of direction k in the step (fitness: [N], shaped)."""
        return antithetic_coefficients(fitness, pairs, signs, num_pairs) / fitness.numel()

    def gradient(self, target: Target, noise: Noise, weights: Tensor) -> Tensor:
        """The ascent direction g = Σ_k w_k ε_k of `target`, fp32, in its shape."""
        return weighted_sum(target, noise, weights)


class EggrollStrategy(Strategy):
    """EGGROLL: rank-`rank` directions A_k B_kᵀ/√r for every matrix, dense Gaussian ones for other parameters.

    A matrix's factors come from the same draw as the adapter path's (noise.layer_noise), so a Linear weight at
    index i sees exactly the noise an adapter-mode layer with layer index i sees.
    """

    def __init__(self, rank: int = 1):
        if isinstance(rank, bool) or not isinstance(rank, int) or rank < 1:
            raise ValueError(f"rank (of the noise A_k B_kᵀ) must be a positive int, got {rank!r}")
        self.rank = rank

    def noise(self, target: Target, key: int, num_pairs: int) -> Noise:
        if target.matrix is None:
            return gaussian(target, key, num_pairs)
        m, n = target.matrix
        return LowRankNoise(*layer_noise(key, num_pairs, m, n, self.rank, target.param.device))

    def __repr__(self) -> str:
        return f"EggrollStrategy(rank={self.rank})"


class OpenAIStrategy(Strategy):
    """Full-rank OpenAI-ES (Salimans et al. 2017): dense Gaussian directions E_k [P, *shape] for every parameter.

    With per-member scoring on an LLM this is the full-parameter ES of Qiu et al. 2025 (arXiv 2509.24372): each
    member's seeded noise is written into the weights, the plain model generates, the centre is restored.
    It costs N/2·m·n noise values per matrix and step instead of EGGROLL's N/2·(m+n)·r.
    """

    def noise(self, target: Target, key: int, num_pairs: int) -> DenseNoise:
        return gaussian(target, key, num_pairs)

    def __repr__(self) -> str:
        return "OpenAIStrategy()"


class StrategyNames(dict):
    """name -> Strategy class. The classic family lives in modules that import this one (classic.py, cma_es.py),
    so its entries are import paths, resolved to the class on lookup."""

    def __getitem__(self, name: str) -> type[Strategy]:
        value = super().__getitem__(name)
        return import_object(value, "strategy") if isinstance(value, str) else value

    def values(self):
        return [self[name] for name in self]

    def items(self):
        return [(name, self[name]) for name in self]


STRATEGIES = StrategyNames(eggroll=EggrollStrategy, openai_es=OpenAIStrategy, simple_es="eggroll_llm.classic:SimpleES",
                           snes="eggroll_llm.classic:SNES", cma_es="eggroll_llm.cma_es:CMAStrategy")


def resolve_strategy(spec: Strategy | str | None, rank: int = 1) -> Strategy:
    """A strategy from a name in STRATEGIES, an import path `package.module:Class` (built with no arguments), an
    instance, or None (EGGROLL at `rank`)."""
    if spec is None or spec == "eggroll":
        return EggrollStrategy(rank)
    if isinstance(spec, Strategy):
        return spec
    if isinstance(spec, str) and spec in STRATEGIES:
        return STRATEGIES[spec]()
    if isinstance(spec, str) and ":" in spec:
        cls = import_object(spec, "strategy")
        strategy = cls() if isinstance(cls, type) else cls
        if not isinstance(strategy, Strategy):
            raise ValueError(f"strategy {spec!r} is a {type(strategy).__name__}, not a subclass of "
                             "eggroll_llm.strategy.Strategy")
        return strategy
    raise ValueError(f"unknown strategy {spec!r}; choose one of {', '.join(STRATEGIES)} or give "
                     "package.module:Class (a Strategy subclass)")
