"""Where θ lives, in place: the module's own target parameters are the ES centre (es.EggrollES's default mode).

The step's noise, the per-member writes and the update are the ES core's (es.py), shared with the adapter mode
(adapter_backend.py); this store only says how θ takes a step and how the batched forward reaches the parameters:

- the forward hooks of the batched population forward (es_layers.py), with this store as their source of noise
  (the population's, drawn once per step) and of row groups;
- the step θ ← θ + lr·d − lr·wd·θ (d: the optimizer's direction of the ES gradient), computed in fp32 and written in
  the parameter's dtype; with `decay_to_base` the decay pulls toward the starting weights θ₀ instead of 0,
  θ ← θ + lr·d − lr·wd·(θ − θ₀), as an adapter's decay pulls ΔW toward 0 (a retention lever; θ₀ is kept, one more
  copy of the targets). Parameters outside the targets are never written.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .es_layers import RowPlan, make_hooks, row_plan
from .optim import Optimizer
from .perturbed import Population
from .strategy import LowRankNoise, Noise, Target, lowrank_sum


class InPlaceStore:
    def __init__(self, model: nn.Module, population: Population, targets: dict[str, Target],
                 decay_to_base: bool = False):
        self.model, self.population, self.targets = model, population, targets
        self.base = {name: t.param.detach().clone() for name, t in targets.items()} if decay_to_base else None
        self.seen: set[int] = set()                # target indices the batched forward perturbed this step
        self._plans: tuple[int, dict[torch.device, RowPlan]] = (-1, {})
        self.handles = [handle for hook in make_hooks(model, targets, self) for handle in hook.attach()]

    def noise(self, target: Target) -> Noise:
        return self.population.noise(target)

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

    def check_member_writes(self) -> None:
        pass  # θ is the parameter itself: a member written into it is the member, tied or not

    @torch.no_grad()
    def apply(self, target: Target, g: Tensor | LowRankNoise, coeffs: Tensor | None, optimizer: Optimizer,
              t: int) -> float:
        """θ ← θ + lr·d − lr·wd·θ (θ − θ₀ with decay_to_base) for one target; returns ‖Δθ‖². g: dense, or low-rank
        factors with `coeffs`."""
        if coeffs is not None:
            g = lowrank_sum(target, g, coeffs)
        d = optimizer.direction(target.name, g, t)
        if optimizer.scale_free and target.scale != 1.0:
            d = d * target.scale
        p, lr, wd = target.param, optimizer.lr, optimizer.weight_decay
        if not wd and p.dtype == torch.float32:
            p.add_(d, alpha=lr)     # no temporary the size of the parameter
            flat, scale = d.reshape(-1), lr
        else:
            step = d * lr
            if wd:
                pulled = p.detach().float()
                if self.base is not None:
                    pulled = pulled - self.base[target.name].float()  # .float() of fp32 is p itself: no -=
                step.sub_(pulled, alpha=lr * wd)
            p.add_(step.to(p.dtype))
            flat, scale = step.reshape(-1), 1.0
        return scale ** 2 * float(torch.dot(flat, flat))

    def state_dict(self) -> dict[str, Tensor]:
        return {f"param.{name}": t.param.detach().cpu().contiguous() for name, t in self.targets.items()}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, t in self.targets.items():
            value = state.get(f"param.{name}")
            if value is None or value.shape != t.shape:
                raise ValueError(f"state does not match the model: param.{name} missing or of another shape; load "
                                 "it into the model and targets it was saved from")
            t.param.copy_(value)

    def trained_numel(self) -> int:
        return sum(t.param.numel() for t in self.targets.values())

    def detach(self) -> nn.Module:
        """Remove the hooks: the model is a plain module holding the centre."""
        for handle in self.handles:
            handle.remove()
        self.handles = []
        return self.model
