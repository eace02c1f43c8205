"""The generic layer's batched population forward: every member in one forward over the module's own parameters.

The model keeps its modules and parameters (they are the centre θ); forward hooks add each batch row's member
perturbation s_i σ ε_k to the output of the module that owns a target parameter, without building any member's
weights (docs/design.md §1):

- nn.Linear    y += s_i σ/√r (x B_k) A_kᵀ  (low rank) or s_i σ x E_kᵀ (dense); bias: y += s_i σ e_k.
  When every row holds the same input (x.expand(N, ...), stride 0 on the rows), the base matmul runs once.
- nn.Embedding y += s_i σ/√r A_k[ids] B_kᵀ, or s_i σ E_k[ids].
- nn.Conv1d/2d/3d (groups=1, zero padding), kernel viewed as [out, in·k…]: the rank-r noise is a conv with r
  filters B_k followed by a 1×1 mix A_k, one grouped conv for all members (groups = members in the batch).
- Anything else that owns a target (norm layers, other convs, custom modules): the per-member fallback. The module
  runs once more for every member present in the batch, through torch.func.functional_call with that member's
  parameters θ + s_i σ ε_k, on that member's rows. Correct for any module whose inputs and output carry the batch
  on dim 0; its cost is one forward of the module per member.

Rows: `population.set_rows(member_ids)` gives the member of each row of dim 0 (None: the plain centre model).
Rows that come in equal runs of one member (the member-major layouts of es.population_rows) are handled as one
group each, so a flat [N·B, …] batch costs the same thin matmuls as [N, B, …].
A parameter used without its owning module's forward (e.g. nn.MultiheadAttention reads out_proj.weight directly)
gets no perturbation here; the ES object then refuses the step and names it (see `InPlaceStore.check_coverage`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from .noise import PopulationError
from .perturbed import Population, _matches, add_linear_noise, gather_linear
from .strategy import DenseNoise, LowRankNoise, Noise, Target, member_noise


class RowPlan(NamedTuple):
    """The batch rows as G groups of `run` consecutive rows, each group one member."""

    rows: int
    run: int
    pairs: Tensor   # [G] long: the noise pair of each group's member
    signs: Tensor   # [G] fp32: s_i of each group's member
    scales: Tensor  # [G] fp32: s_i σ of each group's member


def row_plan(population: Population, device: torch.device) -> RowPlan:
    rows = population.rows                                                   # [R] int64, CPU
    R = rows.numel()
    change = (rows != rows[0]).nonzero()
    run = int(change[0, 0]) if change.numel() else R
    if R % run or not bool((rows.view(-1, run) == rows.view(-1, run)[:, :1]).all()):
        run = 1                                                              # no equal runs: one group per row
    members = rows.view(-1, run)[:, 0]
    signs = population.signs[members]
    return RowPlan(R, run, population.pairs[members].to(device), signs.to(device),
                   (signs * population.sigma).to(device))


def select_targets(model: nn.Module, target_modules: list[str] | str | None = None,
                   param_filter: Callable[[str, nn.Parameter], bool] | None = None,
                   include_frozen: bool = False) -> dict[str, Target]:
    """The parameters the ES moves, by name, in named_parameters order (= their index in the noise key).

    Every parameter with requires_grad=True, narrowed by `target_modules` (module names, PEFT's rule: list entries
    match as name suffixes, a string is a regex over the full name; a module's own parameters are selected) and
    by `param_filter(name, param) -> bool`. Frozen parameters (requires_grad=False) are never selected, unless
    `include_frozen` (a loaded LLM is frozen: ES needs no gradients, so the recipe's targets decide alone).
    """
    owners = {id(p): type(module) for _, module in model.named_modules() for p in module.parameters(recurse=False)}
    named = list(model.named_parameters())
    chosen = [(name, p) for name, p in named if (p.requires_grad or include_frozen)
              and (target_modules is None or _matches(name.rpartition(".")[0], target_modules))
              and (param_filter is None or param_filter(name, p))]
    if not chosen:
        listed = ", ".join(f"{n}{'' if p.requires_grad else ' (frozen)'}" for n, p in named[:20])
        raise ValueError(f"no parameter of {type(model).__name__} selected (target_modules={target_modules!r}, "
                         f"param_filter={'set' if param_filter else None}); its parameters: {listed or '(none)'}"
                         f"{' …' if len(named) > 20 else ''}. Unfreeze (requires_grad=True) what the ES should move")
    targets = {}
    for index, (name, p) in enumerate(chosen):
        conv_kernel = issubclass(owners[id(p)], nn.modules.conv._ConvNd) and name.endswith("weight")
        matrix = (p.shape[0], p[0].numel()) if p.dim() == 2 or (conv_kernel and p.dim() > 2) else None
        targets[name] = Target(name, index, p, matrix)
    return targets


class _Hook:
    """The perturbation of one module's target parameters (`targets`: attribute name → Target) in the forward."""

    def __init__(self, module: nn.Module, targets: dict[str, Target], source):
        # source: the InPlaceStore (population, noise(target), plan(device), seen)
        self.module, self.targets, self.source = module, targets, source
        self.busy = False  # inside this module's own fallback re-run

    def rows_of(self, x: Tensor) -> int:
        return x.shape[0]

    def attach(self) -> list:
        return [self.module.register_forward_hook(self.forward_hook, with_kwargs=True)]

    def forward_hook(self, module: nn.Module, args: tuple, kwargs: dict, output):
        if self.source.population.rows is None or self.busy:
            return None
        self.source.seen.update(t.index for t in self.targets.values())
        x = args[0] if args else kwargs["input"]
        plan = self.source.plan(output.device)
        if self.rows_of(x) != plan.rows:
            raise PopulationError(f"{plan.rows} member ids set but {type(module).__name__} got a batch of "
                                  f"{self.rows_of(x)} rows; set one member id per row of dim 0 whenever the batch "
                                  "changes")
        inplace = not (torch.is_grad_enabled() and output.requires_grad)  # output is this forward's own tensor
        return self.perturb(x, output, plan, inplace)

    def perturb(self, x: Tensor, y: Tensor, plan: RowPlan, inplace: bool) -> Tensor:
        raise NotImplementedError

    def noise(self, attr: str) -> Noise | None:
        target = self.targets.get(attr)
        return None if target is None else self.source.noise(target)

    def scales(self, attr: str, scales: Tensor) -> Tensor:
        """s_i σ times the target's own scale (sigma_scale)."""
        target = self.targets.get(attr)
        return scales if target is None or target.scale == 1.0 else scales * target.scale


def _add(y: Tensor, term: Tensor, inplace: bool) -> Tensor:
    return y.add_(term) if inplace else y + term


def _baddbmm(y: Tensor, a: Tensor, b: Tensor, inplace: bool) -> Tensor:
    return y.baddbmm_(a, b) if inplace else torch.baddbmm(y, a, b)


class LinearHook(_Hook):
    shared_rows: int | None = None  # set by the pre-hook when every row holds the same input
    _factors: tuple = ((), None)    # (key, gathered weight factors) of the current rows and noise

    def rows_of(self, x: Tensor) -> int:
        return x.shape[0] if self.shared_rows is None else self.shared_rows

    def attach(self) -> list:
        return [self.module.register_forward_pre_hook(self.shared_input), *super().attach()]

    def shared_input(self, module: nn.Module, args: tuple):
        """Rows that all hold the same input (stride 0 on dim 0): run the base matmul on the first row only."""
        self.shared_rows = None
        x = args[0] if args else None
        if self.source.population.rows is None or self.busy or not isinstance(x, Tensor) or x.dim() < 2 \
                or x.shape[0] < 2 or x.stride(0) != 0:
            return None
        self.shared_rows = x.shape[0]
        return (x[:1], *args[1:])

    def perturb(self, x: Tensor, y: Tensor, plan: RowPlan, inplace: bool) -> Tensor:
        if self.shared_rows is not None:
            return self.perturb_shared(x, y, plan)
        m, n, G = y.shape[-1], x.shape[-1], plan.pairs.numel()
        y3, x3 = y.view(G, -1, m), x.reshape(G, -1, n)                        # [G, L·S, m], [G, L·S, n]
        weight, bias = self.targets.get("weight"), self.noise("bias")
        if weight is not None:
            y3 = add_linear_noise(y3, x3, self.factors(weight, plan, x.dtype), inplace)
        if bias is not None:
            y3 = _add(y3, (bias.E[plan.pairs] * self.scales("bias", plan.scales)[:, None]).to(y.dtype)[:, None, :],
                      inplace)
        return y3.view(y.shape)

    def factors(self, weight: Target, plan: RowPlan, dtype: torch.dtype) -> tuple[Tensor, ...]:
        """The weight's per-group noise factors (perturbed.gather_linear), gathered once per rows/noise version, not
        per decoded token."""
        pop = self.source.population
        key = (pop.version, dtype, plan.pairs.device)
        if self._factors[0] != key:
            noise = pop.noise(weight, dtype)
            self._factors = (key, gather_linear(noise, plan.pairs, plan.signs, pop.sigma, weight.scale, dtype))
        return self._factors[1]

    def perturb_shared(self, x0: Tensor, y0: Tensor, plan: RowPlan) -> Tensor:
        """x0: the one shared row [1, *S, n], y0 its base output [1, *S, m] → every row's output [rows, *S, m]."""
        rows, m, n = self.shared_rows, y0.shape[-1], x0.shape[-1]
        pairs = plan.pairs.repeat_interleave(plan.run)                          # [rows]
        scales = plan.scales.repeat_interleave(plan.run)
        x2, out = x0.reshape(-1, n), y0.reshape(1, -1, m).expand(rows, -1, -1)  # [S, n], [rows, S, m]
        weight, bias = self.noise("weight"), self.noise("bias")
        if isinstance(weight, LowRankNoise):
            A, B = weight
            P, _, r = B.shape
            xb = (x2 @ B.permute(1, 0, 2).reshape(n, P * r).to(x0.dtype)).view(-1, P, r)  # all pairs at once: [S, P, r]
            xb = xb.index_select(1, pairs).transpose(0, 1)                                 # [rows, S, r]
            right = A[pairs] * (self.scales("weight", scales) / math.sqrt(r))[:, None, None]
            out = torch.baddbmm(out, xb, right.transpose(1, 2).to(x0.dtype))
        elif isinstance(weight, DenseNoise):
            E = weight.E[pairs] * self.scales("weight", scales)[:, None, None]
            out = torch.baddbmm(out, x2.expand(rows, -1, -1), E.transpose(1, 2).to(x0.dtype))
        if bias is not None:  # out is a fresh tensor once the weight's noise went in; else the expanded y0
            out = _add(out, (bias.E[pairs] * self.scales("bias", scales)[:, None]).to(y0.dtype)[:, None, :],
                       inplace=weight is not None)
        return out.reshape(rows, *y0.shape[1:])


class EmbeddingHook(_Hook):
    def perturb(self, ids: Tensor, y: Tensor, plan: RowPlan, inplace: bool) -> Tensor:
        d, G = y.shape[-1], plan.pairs.numel()
        y3, ids2 = y.view(G, -1, d), ids.reshape(G, -1)                         # [G, L·S, d], [G, L·S]
        weight = self.noise("weight")
        if isinstance(weight, LowRankNoise):
            A, B = weight                                                       # [P, V, r], [P, d, r]
            scales = self.scales("weight", plan.scales) / math.sqrt(A.shape[-1])
            left = A[plan.pairs[:, None], ids2] * scales[:, None, None]
            y3 = _baddbmm(y3, left.to(y.dtype), B[plan.pairs].transpose(1, 2).to(y.dtype), inplace)
        else:
            y3 = _add(y3, (weight.E[plan.pairs[:, None], ids2] * self.scales("weight", plan.scales)[:, None, None])
                      .to(y.dtype), inplace)
        return y3.view(y.shape)


_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


class ConvHook(_Hook):
    def perturb(self, x: Tensor, y: Tensor, plan: RowPlan, inplace: bool) -> Tensor:
        conv, mod = _CONV[len(self.module.kernel_size)], self.module
        G, L, C, out = plan.pairs.numel(), plan.run, x.shape[1], y.shape[1]
        y4 = y.view(G, L, out, -1)                                              # [G, L, out, P'] (P' output pixels)
        weight, bias = self.noise("weight"), self.noise("bias")
        if weight is not None:
            # members side by side on the channel axis, one conv group each: [L, G·C, *spatial]
            xg = x.reshape(G, L, *x.shape[1:]).transpose(0, 1).reshape(L, G * C, *x.shape[2:])
            if isinstance(weight, LowRankNoise):
                A, B = weight                                                   # [P, out, r], [P, C·k…, r]
                r = A.shape[-1]
                filters = B[plan.pairs].transpose(1, 2).reshape(G * r, C, *mod.kernel_size)
                z = conv(xg, filters.to(x.dtype), None, mod.stride, mod.padding, mod.dilation, G)  # [L, G·r, …]
                z = z.view(L, G, r, -1).permute(1, 2, 0, 3).reshape(G, r, -1)                    # [G, r, L·P']
                left = A[plan.pairs] * (self.scales("weight", plan.scales) / math.sqrt(r))[:, None, None]  # [G, out, r]
                term = torch.bmm(left.to(x.dtype), z).view(G, out, L, -1).transpose(1, 2)       # [G, L, out, P']
            else:
                E = weight.E[plan.pairs] * self.scales("weight", plan.scales).view(G, *[1] * (weight.E.dim() - 1))
                z = conv(xg, E.reshape(G * out, *E.shape[2:]).to(x.dtype), None, mod.stride, mod.padding,
                         mod.dilation, G)                                                         # [L, G·out, …]
                term = z.view(L, G, out, -1).transpose(0, 1)
            y4 = _add(y4, term, inplace)
        if bias is not None:
            shift = (bias.E[plan.pairs] * self.scales("bias", plan.scales)[:, None]).to(y.dtype)
            y4 = _add(y4, shift[:, None, :, None], inplace)
        return y4.view(y.shape)


class FallbackHook(_Hook):
    """Per-member fallback: re-run the module for each member present, with that member's parameters."""

    def forward_hook(self, module: nn.Module, args: tuple, kwargs: dict, output):
        population = self.source.population
        if population.rows is None or self.busy:
            return None
        self.source.seen.update(t.index for t in self.targets.values())
        rows = population.rows
        outputs = output if isinstance(output, tuple) else (output,)
        if not all(o is None or (isinstance(o, Tensor) and o.dim() and o.shape[0] == rows.numel()) for o in outputs):
            raise PopulationError(f"{type(module).__name__} owns a perturbed parameter but has no batched rule, and "
                                  f"its per-member fallback needs tensor outputs with one row per member id "
                                  f"({rows.numel()}); score with es.step(fitness_fn) or leave its parameters out")
        results = tuple(None if o is None else torch.empty_like(o) for o in outputs)
        self.busy = True
        try:
            for member in rows.unique().tolist():
                index = (rows == member).nonzero().squeeze(1)
                scale = float(population.signs[member]) * population.sigma
                pair = int(population.pairs[member])
                params = {attr: (t.param.float() + scale * t.scale * member_noise(t, self.source.noise(t), pair))
                          .to(t.param.dtype) for attr, t in self.targets.items()}
                population.set_rows(rows[index])  # nested hooks see only this member's rows
                sub_args = tuple(_take(a, index, rows.numel()) for a in args)
                sub_kwargs = {k: _take(v, index, rows.numel()) for k, v in kwargs.items()}
                got = functional_call(module, params, sub_args, sub_kwargs)
                for result, part in zip(results, got if isinstance(got, tuple) else (got,)):
                    if result is not None:
                        result[index.to(result.device)] = part
        finally:
            population.set_rows(rows)
            self.busy = False
        return results if isinstance(output, tuple) else results[0]


def _take(value, index: Tensor, rows: int):
    """Rows `index` of a batched tensor argument; other arguments pass unchanged."""
    if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == rows:
        return value.index_select(0, index.to(value.device))
    return value


def make_hooks(model: nn.Module, targets: dict[str, Target], source) -> list[_Hook]:
    """One hook per module that owns a target, of the batched kind its type allows, else the per-member fallback.

    Exact types only: a subclass may compute something else in its forward. A parameter shared by two modules
    (tied embeddings) is perturbed in both, as the member's materialised parameter would be.
    """
    by_param = {id(t.param): t for t in targets.values()}
    hooks = []
    for module in model.modules():
        own = {attr: by_param[id(p)] for attr, p in module.named_parameters(recurse=False) if id(p) in by_param}
        if not own:
            continue
        kind = type(module)
        if kind is nn.Linear:
            hooks.append(LinearHook(module, own, source))
        elif kind is nn.Embedding and module.max_norm is None:  # max_norm renormalises rows inside the forward
            hooks.append(EmbeddingHook(module, own, source))
        elif kind in (nn.Conv1d, nn.Conv2d, nn.Conv3d) and module.groups == 1 and module.padding_mode == "zeros":
            hooks.append(ConvHook(module, own, source))
        else:
            hooks.append(FallbackHook(module, own, source))
    return hooks
