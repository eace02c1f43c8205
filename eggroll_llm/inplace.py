"""The generic layer's backend: a module's own parameters are the ES centre, updated in place.

es.EggrollES uses this when no `adapter_rank` is given. It owns, for the target parameters (es_layers.select_targets):

- the step's noise, drawn by the strategy from each parameter's key and cached while the key (step // noise_reuse)
  lasts, so the batched forward, the per-member path and the update all see the same directions;
- the forward hooks of the batched population forward (es_layers.py);
- the per-member path: `with backend.members() as apply: apply(i)` writes member i's parameters θ + s_i σ ε_k into
  the model. The centre is copied once on entry, every member is written from that copy (never by subtracting the
  previous member's noise, which would drift), and the copy is written back on exit, so the model ends
  bit-identical to its centre even when scoring raises;
- the update θ ← θ + lr·v − lr·wd·θ, v = μ v + g (heavy ball, decoupled weight decay), g from the strategy, in fp32
  and then in the parameter's dtype. Parameters outside the targets are never written.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from .es_layers import RowPlan, make_hooks, row_plan
from .noise import noise_seed
from .perturbed import Population
from .strategy import DenseNoise, LowRankNoise, Noise, Strategy, Target, member_noise


class InPlaceBackend:
    def __init__(self, model: nn.Module, population: Population, strategy: Strategy, targets: dict[str, Target], *,
                 lr: float, momentum: float, weight_decay: float):
        self.model, self.population, self.strategy, self.targets = model, population, strategy, targets
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay
        self.velocity: dict[str, Tensor] = {}      # momentum buffers, fp32, each parameter's shape
        self.seen: set[int] = set()                # target indices the batched forward perturbed this step
        self._noise: dict[int, Noise] = {}
        self._noise_window: int | None = None
        self._plans: tuple[int, dict[torch.device, RowPlan]] = (-1, {})
        self.handles = [handle for hook in make_hooks(model, targets, self) for handle in hook.attach()]

    def noise(self, target: Target) -> Noise:
        """The strategy's directions for `target` at the population's step, drawn once per noise key."""
        pop = self.population
        window = pop.step // pop.noise_reuse
        if window != self._noise_window:
            self._noise, self._noise_window = {}, window
        if target.index not in self._noise:
            key = noise_seed(pop.seed, pop.step, pop.noise_reuse, target.index)
            self._noise[target.index] = checked_noise(self.strategy, target, key, pop.num_pairs)
        return self._noise[target.index]

    def plan(self, device: torch.device) -> RowPlan:
        """The rows' member groups on `device`, recomputed only when the rows change (population.version)."""
        version = self.population.version
        if self._plans[0] != version:
            self._plans = (version, {})
        plans = self._plans[1]
        if device not in plans:
            plans[device] = row_plan(self.population, device)
        return plans[device]

    def begin_step(self) -> None:
        self.seen.clear()

    def check_coverage(self) -> None:
        """After a batched forward (one that perturbed anything), every target must have been perturbed too: a
        target no hook reached would be updated with noise that never touched the scores."""
        missing = [name for name, t in self.targets.items() if t.index not in self.seen]
        if self.seen and missing:
            raise ValueError(f"the batched forward never perturbed {', '.join(missing[:5])}"
                             f"{' …' if len(missing) > 5 else ''}: unused, or read outside its module's forward "
                             "(nn.MultiheadAttention reads out_proj.weight directly). Score with es.step(fitness_fn), "
                             "or leave these parameters out with param_filter / target_modules")

    @contextmanager
    def members(self) -> Iterator[Callable[[int], None]]:
        """`apply(i)` writes member i's parameters into the model; the exact centre is written back on exit."""
        pop = self.population
        centre = {name: t.param.detach().clone() for name, t in self.targets.items()}
        writes = [(t, centre[name], self.noise(t)) for name, t in self.targets.items()]
        pairs, scales = pop.pairs.tolist(), (pop.signs * pop.sigma).tolist()   # per member, as Python numbers

        @torch.no_grad()
        def apply(member: int) -> None:
            for target, kept, noise in writes:
                write_member(target, kept, noise, pairs[member], scales[member])

        try:
            yield apply
        finally:
            with torch.no_grad():
                for name, t in self.targets.items():
                    t.param.copy_(centre[name])

    @torch.no_grad()
    def update(self, fitness: Tensor) -> dict[str, float]:
        pop = self.population
        weights = self.strategy.weights(fitness, pop.pairs, pop.signs, pop.num_pairs)       # [P]
        sq_norm = 0.0
        for name, t in self.targets.items():
            g = self.strategy.gradient(t, self.noise(t), weights).to(torch.float32)
            if g.shape != t.shape:
                raise ValueError(f"{type(self.strategy).__name__}.gradient returned shape {tuple(g.shape)} for "
                                 f"{name} of shape {tuple(t.shape)}")
            if self.momentum:  # heavy ball: v ← μ v + g, out of place (g may alias the strategy's tensors)
                g = g if name not in self.velocity else torch.add(g, self.velocity[name], alpha=self.momentum)
                self.velocity[name] = g
            if not self.weight_decay and t.param.dtype == torch.float32:
                t.param.add_(g, alpha=self.lr)     # no temporary the size of the parameter
                flat, scale = g.reshape(-1), self.lr
            else:
                step = g * self.lr
                if self.weight_decay:
                    step.sub_(t.param.detach().float(), alpha=self.lr * self.weight_decay)
                t.param.add_(step.to(t.param.dtype))
                flat, scale = step.reshape(-1), 1.0
            sq_norm += scale ** 2 * float(torch.dot(flat, flat))
        return {"update_norm": sq_norm ** 0.5,
                "fitness_std": float(fitness.std()) if fitness.numel() > 1 else 0.0}

    def state_dict(self) -> dict[str, Tensor]:
        state = {f"param.{name}": t.param.detach().cpu().contiguous() for name, t in self.targets.items()}
        state.update({f"optimizer.{name}.velocity": v.cpu() for name, v in self.velocity.items()})
        return state

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, t in self.targets.items():
            value = state.get(f"param.{name}")
            if value is None or value.shape != t.shape:
                raise ValueError(f"state does not match the model: param.{name} missing or of another shape; load "
                                 "it into the model and targets it was saved from")
            t.param.copy_(value)
        self.velocity = {name: state[f"optimizer.{name}.velocity"].to(t.param.device)
                         for name, t in self.targets.items() if f"optimizer.{name}.velocity" in state}

    def detach(self) -> nn.Module:
        """Remove the hooks: the model is a plain module holding the centre."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        return self.model


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


def write_member(target: Target, centre: Tensor, noise: Noise, pair: int, scale: float) -> None:
    """target.param ← centre + scale · ε_pair, computed from the kept centre in one fused op where the dtype allows."""
    p = target.param
    if p.dtype == torch.float32 and p.is_contiguous() and centre.is_contiguous():
        if isinstance(noise, LowRankNoise):
            A, B = noise
            m, n = target.matrix
            torch.addmm(centre.view(m, n), A[pair], B[pair].T, alpha=scale / math.sqrt(A.shape[-1]),
                        out=p.view(m, n))
        else:
            torch.add(centre, noise.E[pair], alpha=scale, out=p)
        return
    p.copy_((centre.float() + scale * member_noise(target, noise, pair)).to(p.dtype))
