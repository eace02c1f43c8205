"""CMA-ES in the generic layer, through the `cmaes` library (`pip install "eggroll-llm[strategies]"`).

The library does the maths (Hansen's CMA-ES: cumulative step-size adaptation, rank-one and rank-μ covariance
updates; `cmaes.SepCMA`, the separable variant of Ros & Hansen 2008, for many parameters), and this module is the
glue to the ES engine (es.py):

- the search space is every target parameter flattened into one vector θ (d numbers, in `es.targets` order);
- a step's members are candidates of the library's current distribution, x_i = m + σ_t B D z_i (separable:
  m + σ_t D ⊙ z_i), m, σ_t, B, D the library's mean, step size and eigendecomposition of C, as its own `ask()`
  forms them; z_i are standard normals drawn all at once from the engine's keyed generator (the first target's
  noise key: seed / step / index), not one candidate at a time from the library's NumPy generator, whose
  per-candidate draws cost more than the rest of a generation on a 10k-parameter network. The engine sees
  DenseNoise ε_i = σ_t B D z_i / σ (fp32, σ its own fixed `sigma`), so member i scores θ + σ ε_i = x_i, and the
  library is told exactly those points;
- `update(fitness)` tells the library (x_i, −f_i) (it minimises), and the ascent direction is the library's new
  mean minus θ: with SGD at lr 1 the centre is the library's mean (in the parameters' dtype) after every step.

So `EggrollES(model, strategy="cma_es", population_size=λ, sigma=σ0, lr=1.0, seed=s)` follows the trajectory of
`cmaes.CMA(mean=θ0, sigma=σ0, population_size=λ)` told the same candidates: the library's update, step by step,
with the engine's noise. The library's state (mean, σ, covariance, evolution paths) is saved as tensors in the ES
object's state dict and restored exactly; nothing is pickled, and the noise regenerates from its keys. Full
covariance up to `full_max_dim` parameters (the library's eigendecomposition is O(d³) per generation), separable
above it, or as `separable=` says.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from .noise import noise_seed
from .optim import SGD
from .strategy import DenseNoise, Noise, Strategy, Target

FULL_MAX_DIM = 1000


def load_cmaes():
    try:
        import cmaes
    except ImportError as err:
        raise ImportError("strategy cma_es needs the cmaes library: pip install 'eggroll-llm[strategies]' "
                          "(or pip install cmaes)") from err
    return cmaes


class CMAStrategy(Strategy):
    """CMA-ES (full covariance) or separable CMA-ES through `cmaes`, in place, independent samples, SGD at lr 1."""

    antithetic = False

    def __init__(self, separable: bool | None = None, full_max_dim: int = FULL_MAX_DIM):
        self.separable, self.full_max_dim = separable, full_max_dim
        self.es, self.lib, self.slices, self.diagonal = None, None, {}, False
        self.candidates: np.ndarray | None = None    # [λ, d] fp64: this step's x_i, drawn at its first noise()
        self.directions: Tensor | None = None        # [λ, d] fp32: ε_i = (x_i − m) / σ (the engine's σ)

    def setup(self, es) -> None:
        pop, opt = es.population, es.optimizer
        problems = [
            (not es.in_place, "works in place (adapter_rank=None): its mean is the parameters themselves"),
            (pop.antithetic, "samples λ independent candidates: set antithetic=False (or leave it None)"),
            (pop.noise_reuse != 1, "draws new candidates every step: set noise_reuse=1"),
            (not isinstance(opt, SGD) or opt.lr != 1.0 or opt.momentum or opt.weight_decay,
             "moves the centre to the library's mean: use optimizer='sgd' with lr=1.0, no momentum or weight decay"),
            (any(t.scale != 1.0 for t in es.targets.values()), "adapts its own scales: use sigma_scale='absolute'"),
        ]
        for bad, why in problems:
            if bad:
                raise ValueError(f"cma_es {why}")
        cmaes = load_cmaes()
        start, self.slices = 0, {}
        for name, t in es.targets.items():
            self.slices[name] = slice(start, start + t.param.numel())
            start += t.param.numel()
        mean = np.concatenate([t.param.detach().double().cpu().reshape(-1).numpy() for t in es.targets.values()])
        self.diagonal = len(mean) > self.full_max_dim if self.separable is None else self.separable
        self.es = es
        self.lib = (cmaes.SepCMA if self.diagonal else cmaes.CMA)(mean=mean, sigma=pop.sigma,
                                                                  population_size=pop.population_size)

    def noise(self, target: Target, key: int, num_pairs: int) -> Noise:
        """This step's directions ε_i = (x_i − m) / σ of `target` (columns of one draw over all targets, made at the
        first call of the step)."""
        if self.candidates is None:
            self.sample(num_pairs)
        E = self.directions[:, self.slices[target.name]]
        return DenseNoise(E.reshape(num_pairs, *target.shape).to(target.param.device))

    def sample(self, num_pairs: int) -> None:
        """ε_i = σ_t B D z_i / σ from the library's current state (B D z_i ~ N(0, C), as its `ask()` forms it; its
        eigendecomposition stays cached until `tell`), z from the first target's key; the candidates the library is
        told are what the engine scores, x_i = m + σ ε_i. fp32 and in place where it can: on a network every
        [λ, d] temporary is megabytes."""
        pop, first = self.es.population, next(iter(self.es.targets.values()))
        generator = torch.Generator().manual_seed(noise_seed(pop.seed, pop.step, pop.noise_reuse, first.index))
        z = torch.randn(num_pairs, len(self.lib.mean), generator=generator)                 # [λ, d] fp32, one draw
        ratio = self.lib._sigma / pop.sigma
        if self.diagonal:
            eps = z.mul_(torch.from_numpy(self.lib._eigen_decomposition() * ratio).to(torch.float32))   # D ⊙ z
        else:
            B, D = self.lib._eigen_decomposition()
            eps = (z.double() @ torch.from_numpy(B * (D * ratio)).T).to(torch.float32)                # B D z
        self.directions = eps
        self.candidates = torch.add(torch.from_numpy(self.lib.mean), eps, alpha=pop.sigma).numpy()   # fp64, one pass

    def update(self, fitness: Tensor) -> None:
        if self.candidates is None:
            raise RuntimeError("cma_es was told fitness for a step whose candidates were never drawn: score the "
                               "population (es.step, or es.evaluate / es.members) before es.tell")
        values = (-fitness.double()).tolist()
        self.lib.tell([(x, v) for x, v in zip(self.candidates, values)])
        self.candidates = self.directions = None

    def gradient(self, target: Target, noise: Noise, weights: Tensor) -> Tensor:
        new = torch.from_numpy(self.lib.mean[self.slices[target.name]]).view(target.shape)
        return (new - target.param.detach().double().cpu()).to(torch.float32).to(target.param.device)

    @property
    def sigma(self) -> float:
        """The library's current step size σ."""
        return float(self.lib._sigma)

    def state_dict(self) -> dict[str, Tensor]:
        """The library's own serialised state (what it pickles, its arrays and numbers), as tensors."""
        return {f"cma.{k}": torch.from_numpy(np.array(v)) for k, v in self.lib.__getstate__().items()
                if v is not None}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if "cma._mean" not in state:
            raise ValueError("state has no cma_es state (strategy.cma.*): load a checkpoint of a cma_es run over "
                             "the same targets")
        fresh = self.lib.__getstate__()
        restored = {}
        for k, like in fresh.items():
            saved = state.get(f"cma.{k}")
            if saved is None:
                restored[k] = None
            elif isinstance(like, (bool, int, float)) and not isinstance(like, np.ndarray):
                restored[k] = type(like)(saved.item())
            else:
                restored[k] = saved.numpy().copy()
        self.lib.__setstate__(restored)
        self.candidates = self.directions = None

    def __repr__(self) -> str:
        return f"CMAStrategy(separable={self.separable}, full_max_dim={self.full_max_dim})"
