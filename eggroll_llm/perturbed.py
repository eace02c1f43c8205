"""The batched perturbed forward: every population member in one forward pass, no member's W ever built.

docs/design.md §1: a target layer computes, for a batch row that belongs to member i,

    y = x Wᵀ + x V Uᵀ + s_i (σ/√r) (x B_i) A_iᵀ

The base matmul x Wᵀ is shared by all rows, and so is the adapter (U Vᵀ, fp32 master values, §3); the member's
rank-r noise is a thin batched matmul on top. `attach_eggroll` swaps a model's target nn.Linear modules
for `EggrollLinear` wrappers that share one `Population`; the generation engine says which member each batch
row belongs to with `population.set_rows(member_ids)` and the model is otherwise used as usual (KV cache and all).

Cost model (docs/design.md §2 asks for ≥ 0.9× the tokens/s of plain generation): the adapter is shared by every row,
so in fp32 it is merged once into a cached W + ΔW (no cost per token; in bf16 / fp16 it stays one thin GEMM
accumulated into y, because rounding W + ΔW to 16 bits would lose small updates). The member noise adds, per layer
and token, one thin bmm (x B_i) and one broadcast multiply-add into y. The noise is drawn and cast to the compute
dtype once per step, and each layer gathers its per-row factors once per `set_rows`, not once per decoded token.

    population = Population(population_size=8, sigma=1e-3, rank=1)
    layers = attach_eggroll(model, population)           # q,k,v,o,gate,up,down of every block
    with population.perturb(step, member_ids):           # member id of each batch row
        logits = model(input_ids).logits
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .noise import PopulationError, member_pairs, noise_seed, num_pairs
from .strategy import EggrollStrategy, LowRankNoise, Noise, Strategy, Target, checked_noise


def check_sigma(sigma: float) -> None:
    """The one bound on σ (EggrollES and a recipe's es.sigma alike): a perturbation on the weights' own scale."""
    if not (isinstance(sigma, (int, float)) and math.isfinite(sigma) and 0 < sigma <= 1):
        raise PopulationError(f"sigma must be in (0, 1] (a perturbation on the weights' own scale; the paper uses "
                              f"~1e-3 on real LLMs), got {sigma}")


class TargetModulesError(ValueError):
    """target_modules / adapter_rank that select nothing or cannot be built; the message lists what exists."""


class Population:
    """Shared state of all wrapped layers: the ES hyper-parameters, the current step and each batch row's member.

    `rows` is None outside population generation: the model then runs with its adapter only (evaluation, export
    checks). The hyper-parameters are fixed at construction; build a new Population to change them.
    """

    def __init__(self, population_size: int, sigma: float, rank: int = 1, antithetic: bool = True,
                 seed: int = 0, noise_reuse: int = 1, step: int = 0, strategy: Strategy | None = None):
        check_sigma(sigma)
        if rank < 1:
            raise PopulationError(f"rank (of the noise A_i B_iᵀ) must be >= 1, got {rank}")
        if noise_reuse < 1:
            raise PopulationError(f"noise_reuse must be >= 1 (1 = fresh noise every step), got {noise_reuse}")
        self.num_pairs = num_pairs(population_size, antithetic)  # validates population_size and antithetic
        self.strategy = EggrollStrategy(rank) if strategy is None else strategy
        self.population_size, self.sigma = population_size, float(sigma)
        self.rank = getattr(self.strategy, "rank", rank)
        self.antithetic, self.seed, self.noise_reuse = antithetic, seed, noise_reuse
        self.pairs, self.signs = member_pairs(population_size, antithetic)  # [N] int64, [N] fp32
        self.version = 0  # bumped whenever the noise, σ or the rows change; layers key their gathered factors on it
        self._step, self._rows = step, None
        self._noise: dict[int, Noise] = {}                      # target index -> this window's fp32 noise
        self._cast: dict[tuple, Noise] = {}                     # (index, dtype) -> that noise, cast
        self._row_factors: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def step(self) -> int:
        return self._step

    @step.setter
    def step(self, step: int) -> None:
        self.set_step(step)

    @property
    def rows(self) -> torch.Tensor | None:
        """Member id of each batch row ([batch] int64, CPU), or None for the adapter-only model."""
        return self._rows

    @rows.setter
    def rows(self, member_ids) -> None:
        self.set_rows(member_ids)

    def set_step(self, step: int) -> None:
        """Move to `step`; the cached noise is dropped once the key (step // noise_reuse) changes."""
        if step // self.noise_reuse != self._step // self.noise_reuse:
            self._noise.clear()
            self._cast.clear()
            self._bump()
        self._step = step

    def set_sigma(self, sigma: float) -> None:
        """Change σ from the next forward on (a σ schedule); the noise directions are unchanged."""
        check_sigma(sigma)
        if float(sigma) != self.sigma:
            self.sigma = float(sigma)
            self._bump()

    def set_rows(self, member_ids: Sequence[int] | torch.Tensor | None) -> None:
        """Say which member each batch row belongs to (None: no perturbation); call again when the rows change."""
        if member_ids is None:
            self._rows = None
        else:
            rows = torch.as_tensor(member_ids, dtype=torch.long).cpu()
            if rows.dim() != 1 or rows.numel() == 0:
                raise PopulationError(f"member_ids must be a non-empty 1-D list (one id per batch row), "
                                      f"got shape {tuple(rows.shape)}")
            if int(rows.min()) < 0 or int(rows.max()) >= self.population_size:
                raise PopulationError(f"member ids must lie in [0, {self.population_size}), got "
                                      f"{int(rows.min())}..{int(rows.max())}; ids index the population")
            self._rows = rows
        self._bump()

    @contextmanager
    def perturb(self, step: int, member_ids: Sequence[int] | torch.Tensor) -> Iterator[Population]:
        """Run the enclosed forwards as the population at `step`; rows are reset to None on exit."""
        self.set_step(step)
        self.set_rows(member_ids)
        try:
            yield self
        finally:
            self.set_rows(None)

    def noise(self, target: Target, dtype: torch.dtype = torch.float32) -> Noise:
        """The strategy's directions for `target` at the current step: THE noise of the step, drawn once per noise
        key (seed, step // noise_reuse, target.index) and read by the batched forward, the per-member writes and the
        update alike. fp32 on the parameter's device; another `dtype` is a cached cast of the same draw."""
        if target.index not in self._noise:
            key = noise_seed(self.seed, self._step, self.noise_reuse, target.index)
            self._noise[target.index] = checked_noise(self.strategy, target, key, self.num_pairs)
        noise = self._noise[target.index]
        if dtype == torch.float32:
            return noise
        cast_key = (target.index, dtype)
        if cast_key not in self._cast:
            self._cast[cast_key] = type(noise)(*(t.to(dtype) for t in noise))
        return self._cast[cast_key]

    def row_factors(self, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
        """(pair index [batch] int64, sign s_i [batch] fp32) of each batch row, on `device`."""
        if self._rows is None:
            raise PopulationError("no rows set: call population.set_rows(member_ids) before a perturbed forward")
        device = torch.device(device)
        if device not in self._row_factors:
            self._row_factors[device] = (self.pairs[self._rows].to(device), self.signs[self._rows].to(device))
        return self._row_factors[device]

    def _bump(self) -> None:
        self.version += 1
        self._row_factors.clear()


def gather_linear(noise: Noise, pairs: torch.Tensor, signs: torch.Tensor, sigma: float, scale: float,
                  dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """The member noise of a Linear weight for G row groups (pairs, signs: [G]), ready for `add_linear_noise`:
    low rank (B_kᵀ [G, r, n], s σ/√r·scale A_kᵀ [G, r, m]), dense (s σ·scale E_kᵀ [G, n, m],). `noise` is already in
    `dtype`; B is kept as [G, r, n] and used transposed, the faster bmm layout for a thin r on CPU (equal on GPU)."""
    if isinstance(noise, LowRankNoise):
        A, B = noise                                                          # [P, m, r], [P, n, r]
        scales = signs * (sigma / math.sqrt(A.shape[-1])) * scale              # [G]
        left_t = B[pairs].transpose(1, 2)                                       # [G, r, n]
        right = (A[pairs] * scales.to(dtype)[:, None, None]).transpose(1, 2)   # [G, r, m]
        return left_t.contiguous(), right.contiguous()
    E = noise.E[pairs] * (signs * (sigma * scale)).to(dtype)[:, None, None]     # [G, m, n]
    return (E.transpose(1, 2).contiguous(),)


def add_linear_noise(y3: torch.Tensor, x3: torch.Tensor, factors: tuple[torch.Tensor, ...],
                     inplace: bool = True) -> torch.Tensor:
    """y3 [G, T, m] + each group's member noise applied to its inputs x3 [G, T, n] (factors: `gather_linear`).

    Low rank: (x B_k) [G, T, r] times s σ/√r A_kᵀ; rank 1 as a broadcast outer product, several times faster than a
    k=1 bmm on CPU. Dense (full-rank strategies): one [G, T, n] @ [G, n, m] bmm. In place when y3 is the forward's
    own fresh output that no backward needs.
    """
    if len(factors) == 1:
        return y3.baddbmm_(x3, factors[0]) if inplace else torch.baddbmm(y3, x3, factors[0])
    left_t, right = factors
    xb = torch.bmm(x3, left_t.transpose(1, 2))                                   # [G, T, r]
    if right.shape[1] == 1:
        return y3.addcmul_(xb, right) if inplace else torch.addcmul(y3, xb, right)
    return y3.baddbmm_(xb, right) if inplace else torch.baddbmm(y3, xb, right)


_NO_ROWS = ((), None)  # empty cache entry of EggrollLinear._rows_cache


class EggrollLinear(nn.Module):
    """A frozen nn.Linear plus an fp32 adapter (U Vᵀ, or a dense delta) plus each row's member noise."""

    def __init__(self, base: nn.Linear, layer_index: int, population: Population, adapter_rank: int | str = 1,
                 name: str = ""):
        super().__init__()
        self.base, self.layer_index, self.population = base, layer_index, population
        self._full = adapter_rank == "full"
        m, n, device = base.out_features, base.in_features, base.weight.device
        # what the ES perturbs: W's [m, n] matrix, keyed by the layer index (θ itself is the adapter below)
        self.target = Target(f"{name}.weight" if name else "weight", layer_index, base.weight, (m, n))
        # fp32 master values whatever the model's dtype (docs/design.md §3); buffers, so they land in state_dict.
        # Never inference tensors (even when attached under inference_mode): `_adapter` keys on their _version.
        with torch.inference_mode(False):
            if self._full:
                self.register_buffer("delta", torch.zeros(m, n, device=device))                  # [m, n]
            else:
                self.register_buffer("lora_U", torch.zeros(m, adapter_rank, device=device))      # [m, R]
                self.register_buffer("lora_V", torch.zeros(n, adapter_rank, device=device))      # [n, R]
        self._adapter_cache: tuple[tuple, tuple[torch.Tensor, ...] | None] = ((), None)
        self._merged_cache: tuple[tuple, torch.Tensor | None] = ((), None)
        # W + ΔW may stand in for W only where forward is exactly F.linear(x, W, b), not in a subclass of nn.Linear
        self._mergeable = type(base) is nn.Linear
        self._rows_cache: tuple[tuple, tuple[torch.Tensor, ...] | None] = _NO_ROWS

    @property
    def adapter_rank(self) -> int | str:
        return "full" if self._full else self.lora_U.shape[1]

    # Model code sometimes reads these off a projection (e.g. `q_proj.weight.dtype`), so mirror nn.Linear's.
    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    def _apply(self, fn, recurse: bool = True):
        """`model.to(bfloat16)` / `.half()` cast the base weights, not the fp32 adapter masters (docs/design.md §3)."""
        masters = dict(self._buffers)
        super()._apply(fn, recurse)
        for key, master in masters.items():
            moved = self._buffers[key]
            if moved is not None and moved.dtype != master.dtype:
                self._buffers[key] = master.to(moved.device)
        return self

    def delta_weight(self) -> torch.Tensor:
        """The adapter's ΔW [m, n] in fp32: U Vᵀ, or the dense delta."""
        return self.delta if self._full else self.lora_U @ self.lora_V.T

    def extra_repr(self) -> str:
        return f"layer_index={self.layer_index}, adapter_rank={self.adapter_rank}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The adapter is shared by every row and enters the same way with or without a population.
        # x: [batch, seq, n] or [batch, n] -> y: [.., m]
        if self._mergeable and torch.finfo(x.dtype).bits >= 32:
            merged = self._merged(x.dtype, x.device)
            y = self.base(x) if merged is None else F.linear(x, merged, self.base.bias)
        else:
            y, factors = self.base(x), self._adapter(x.dtype, x.device)
            if factors is not None:
                y = _add_adapter(y, x, factors)
        if self.population.rows is None:
            if self._rows_cache[0]:  # outside population generation: let the gathered factors go
                self._rows_cache = _NO_ROWS
            return y
        factors = self._gathered(x.dtype, x.device)
        batch, m, n = x.shape[0], y.shape[-1], x.shape[-1]
        if factors[0].shape[0] != batch:
            raise PopulationError(f"{factors[0].shape[0]} member ids set but the batch has {batch} rows; call "
                                  "population.set_rows with one member id per batch row whenever the batch changes")
        # one group per row: x [batch, seq, n] -> y [batch, seq, m] += row i's member noise. In place: y is this
        # forward's own fresh output (a view of it unless a subclassed base returned a non-contiguous y).
        y3 = y.reshape(batch, -1, m)
        return add_linear_noise(y3, x.reshape(batch, -1, n), factors).view(y.shape)

    def _adapter(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...] | None:
        """The adapter in the compute dtype: (delta [m, n],) or (Vᵀ [R, n], U [m, R]); None while it is zero.

        Recast only when a master tensor changed: in-place updates (the fold's copy_, load_state_dict) bump a
        tensor's `_version`, and `.to()` / reassignment give a new tensor, so the key catches both without hooks.
        This runs for every layer and token, hence the plain tuple key.
        """
        buffers = self._buffers
        masters = (buffers["delta"],) if self._full else (buffers["lora_V"], buffers["lora_U"])
        key = (dtype, device) + tuple(v for t in masters for v in (id(t), t._version))
        if self._adapter_cache[0] != key:
            nonzero = all(bool(t.any()) for t in masters)  # one host sync per adapter change, none per token
            with torch.inference_mode(False), torch.no_grad():  # ordinary tensors, whatever mode calls first
                cast = tuple(t.to(device=device, dtype=dtype) for t in masters) if nonzero else None
                if cast is not None and not self._full:
                    cast = (cast[0].T.contiguous(), cast[1])
            self._adapter_cache = (key, cast)
        return self._adapter_cache[1]

    def _merged(self, dtype: torch.dtype, device: torch.device) -> torch.Tensor | None:
        """W + ΔW [m, n] in an fp32-or-wider compute dtype, replacing W so the adapter costs nothing per token.

        ΔW keeps the compute dtype's precision, that of its fp32 masters. Not for bf16 / fp16, where rounding W + ΔW
        would swallow updates far below W's scale: there ΔW is added on its own (`_add_adapter`). The cost is one
        more [m, n] matrix per layer while the adapter is non-zero; rebuilt when the adapter or W changes.
        """
        factors = self._adapter(dtype, device)
        if factors is None:
            return None
        weight = self.base.weight
        key = (self._adapter_cache[0], id(weight), weight._version)
        if self._merged_cache[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                delta = factors[0] if self._full else factors[1] @ factors[0]        # [m, n]
                self._merged_cache = (key, weight.to(device=device, dtype=dtype) + delta)
        return self._merged_cache[1]

    def _gathered(self, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, ...]:
        """Each row's noise factors (`gather_linear`), regathered only when the rows, σ or the noise change
        (`population.version`), not per decoded token."""
        key = (self.population.version, dtype, device)
        if self._rows_cache[0] != key:
            pop = self.population
            pairs, signs = pop.row_factors(device)                                # [batch], [batch]
            factors = gather_linear(pop.noise(self.target, dtype), pairs, signs, pop.sigma, self.target.scale, dtype)
            self._rows_cache = (key, factors)
        return self._rows_cache[1]


def _add_adapter(y: torch.Tensor, x: torch.Tensor, factors: tuple[torch.Tensor, ...]) -> torch.Tensor:
    """y + x ΔWᵀ, accumulated into y (this forward's fresh output) by one GEMM instead of a GEMM and an add."""
    m = y.shape[-1]
    y2, x2 = y.reshape(-1, m), x.reshape(-1, x.shape[-1])                     # [rows, m], [rows, n]
    if len(factors) == 1:
        return y2.addmm_(x2, factors[0].T).view(y.shape)                       # delta: [m, n]
    Vt, U = factors                                                            # [R, n], [m, R]
    return y2.addmm_(F.linear(x2, Vt), U.T).view(y.shape)


def _in_blocks(name: str) -> bool:
    """True for modules inside an indexed container (`model.layers.3.mlp.up_proj`): the transformer blocks."""
    return any(part.isdigit() for part in name.split("."))


def _matches(name: str, target_modules: list[str] | str) -> bool:
    """PEFT's target_modules rule: a regex string must fullmatch the name; a list entry matches as a name suffix."""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, name) is not None
    return any(name == entry or name.endswith("." + entry) for entry in target_modules)


def attach_eggroll(model: nn.Module, population: Population, target_modules: list[str] | str | None = None,
                   adapter_rank: int | str = 1) -> dict[str, EggrollLinear]:
    """Wrap the target nn.Linear modules of `model` in place; returns them by name in named_modules order.

    That order is each layer's index in the noise key, so it must not depend on anything but the model.
    Default targets (docs/design.md §1): every nn.Linear inside the transformer blocks (modules under an indexed
    container such as `model.layers.3`); the output head, embeddings and norms stay frozen. For a model without
    an output head (not a transformers model), every nn.Linear. "all-linear" means what it means in PEFT.
    The wrapped layers' own weights and biases are frozen (requires_grad=False): their trained part is the adapter,
    a buffer, and ES needs no gradients. The model's other parameters are left as they are.
    """
    if adapter_rank != "full" and (isinstance(adapter_rank, bool) or not isinstance(adapter_rank, int)
                                   or adapter_rank < 1):
        raise TargetModulesError(f"adapter_rank must be a positive int or 'full', got {adapter_rank!r}")
    if eggroll_layers(model):
        raise TargetModulesError("this model already has EGGROLL layers; attach once and reuse the returned layers "
                                 "(or find them with eggroll_layers(model))")
    layers = {}
    for index, (name, base) in enumerate(target_linears(model, target_modules)):
        base.requires_grad_(False)
        parent, _, child = name.rpartition(".")
        layers[name] = EggrollLinear(base, index, population, adapter_rank, name)
        setattr(model.get_submodule(parent), child, layers[name])
    return layers


def target_linears(model: nn.Module, target_modules: list[str] | str | None) -> list[tuple[str, nn.Linear]]:
    """The nn.Linear modules `target_modules` selects, in named_modules order (see attach_eggroll for the rules)."""
    get_head = getattr(model, "get_output_embeddings", None)
    head = get_head() if callable(get_head) else None
    linears = [(name, module) for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if target_modules is None:
        chosen = [(name, module) for name, module in linears
                  if module is not head and (_in_blocks(name) or not callable(get_head))]
    elif target_modules == "all-linear":  # PEFT's shorthand: every linear layer but the output head
        chosen = [(name, module) for name, module in linears if module is not head]
    else:
        chosen = [(name, module) for name, module in linears if _matches(name, target_modules)]
    if not chosen:
        suffixes = list(dict.fromkeys(name.rsplit(".", 1)[-1] for name, _ in linears))
        raise TargetModulesError(
            f"target_modules={target_modules!r} matches no nn.Linear in {type(model).__name__}; its linear layers "
            f"end in: {', '.join(suffixes) or '(none)'}. Give a list of these names (matched as suffixes of the "
            "full module name) or a regex that matches the full name, e.g. '.*\\.(q_proj|v_proj)'")
    return chosen


def eggroll_layers(model: nn.Module) -> dict[str, EggrollLinear]:
    """The EggrollLinear modules of `model` by name, in named_modules order (= their layer index order)."""
    return {name: module for name, module in model.named_modules() if isinstance(module, EggrollLinear)}
