"""EGG, the integer-only byte-level recurrent LM: parameters, initialisation and the population forward.

Architecture (docs/egg.md): byte embedding -> `layers` × [int_norm -> minGRU mixer -> residual,
int_norm -> MLP -> residual] -> int_norm -> head over 256 bytes. Every tensor in the forward is int8 (weights,
activations, state, logits) or an int32 accumulator; the kernels are in `intops`. The population forward runs
every member at once: row n of the batch is member n, and its low-rank perturbation enters each matmul as
`intops.lowrank_term` (EGGROLL, paper §4), so no member's perturbed weight matrix is ever formed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch

from . import intops

VOCAB = 256
GATE_GAIN = 2   # gate and MLP pre-activations 4x wider than unit scale: saturation at ±127 is their nonlinearity
MLP_GAIN = 2
HEAD_GAIN = 2   # logits in 1/16 bits: weights of std 16 give logits of std 4 bits


class EggConfigError(ValueError):
    """A model size that cannot work; the message names the flag and the fix."""


@dataclass(frozen=True)
class EggConfig:
    """Size of an EGG model. All matrices are int8; the parameter count is about layers·(2+2·mlp_mult)·hidden²."""

    hidden: int = field(default=64, metadata={"help": "width of the residual stream and the recurrent state"})
    layers: int = field(default=1, metadata={"help": "number of [minGRU, MLP] blocks"})
    mlp_mult: int = field(default=2, metadata={"help": "MLP width = mlp_mult x hidden"})

    def __post_init__(self):
        if not 8 <= self.hidden <= 4096:
            raise EggConfigError(f"--hidden must be in [8, 4096], got {self.hidden}")
        if not 1 <= self.layers <= 64:
            raise EggConfigError(f"--layers must be in [1, 64], got {self.layers}")
        if not 1 <= self.mlp_mult <= 8:
            raise EggConfigError(f"--mlp_mult must be in [1, 8], got {self.mlp_mult}")

    def to_dict(self) -> dict:
        return asdict(self)

    def shapes(self) -> dict[str, tuple[int, int]]:
        """Every parameter's [out, in] shape, in a fixed order (the order also numbers the noise keys)."""
        h, f = self.hidden, self.mlp_mult * self.hidden
        shapes = {"embed": (VOCAB, h)}
        for i in range(self.layers):
            shapes[f"layers.{i}.mix"] = (2 * h, h)   # rows [0, h): gate, rows [h, 2h): candidate
            shapes[f"layers.{i}.up"] = (f, h)
            shapes[f"layers.{i}.down"] = (h, f)
        shapes["head"] = (VOCAB, h)
        return shapes


def init_params(config: EggConfig, seed: int) -> dict[str, torch.Tensor]:
    """int8 weights of std 16 (fixed-point N(0, 1)); the head starts at zero, so the first prediction is uniform."""
    generator = torch.Generator().manual_seed(seed)
    params = {}
    for name, shape in config.shapes().items():
        w = torch.randn(shape, generator=generator) * intops.ONE
        params[name] = torch.zeros(shape, dtype=torch.int8) if name == "head" else intops.saturate(w.round())
    return params


Noise = dict[str, tuple[torch.Tensor, torch.Tensor]]  # name -> (A [N, out, r], B [N, in, r]) int8, per member


def _linear(x: torch.Tensor, params: dict, noise: Noise | None, name: str, sigma_shift: int) -> torch.Tensor:
    """x [N, T, in] int8 -> int32 accumulator [N, T, out] of the member's perturbed weights."""
    x = x.to(torch.int32)  # once, for both products
    acc = intops.int_matmul(x, params[name])
    if noise is not None:
        a, b = noise[name]
        acc += intops.lowrank_term(x, a, b, sigma_shift)
    return acc


def _embed(tokens: torch.Tensor, params: dict, noise: Noise | None, sigma_shift: int) -> torch.Tensor:
    """tokens [N, T] -> [N, T, H] int8: the embedding row, plus row `token` of the member's A Bᵀ."""
    x = params["embed"][tokens]
    if noise is None:
        return x
    a, b = noise["embed"]                                            # a [N, 256, r], b [N, H, r]
    rows = torch.gather(a, 1, tokens.unsqueeze(-1).expand(-1, -1, a.shape[-1]))  # [N, T, r]
    pert = torch.bmm(rows.to(torch.int32), b.to(torch.int32).transpose(1, 2)) >> (intops.FIXED + sigma_shift)
    return intops.saturate(x.to(torch.int32) + pert)


def forward(params: dict[str, torch.Tensor], config: EggConfig, tokens: torch.Tensor,
            noise: Noise | None = None, sigma_shift: int = 4) -> torch.Tensor:
    """Logits [N, T, 256] int8 for the next byte after each input byte.

    tokens [N, T] int64 bytes; a 0 byte is a document separator and resets the recurrent state. `noise` holds
    each row's own factors (see `population.member_noise`); None runs the unperturbed model (evaluation).
    """
    h = config.hidden
    reset = tokens == 0
    x = _embed(tokens, params, noise, sigma_shift)
    for i in range(config.layers):
        acc = _linear(intops.int_norm(x), params, noise, f"layers.{i}.mix", sigma_shift)
        gate = intops.rescale(acc[..., :h], intops.matmul_shift(h, GATE_GAIN))
        candidate = intops.rescale(acc[..., h:], intops.matmul_shift(h))
        x = intops.saturate(x.to(torch.int32) + intops.gated_scan(gate, candidate, reset))
        acc = _linear(intops.int_norm(x), params, noise, f"layers.{i}.up", sigma_shift)
        u = intops.rescale(acc, intops.matmul_shift(h, MLP_GAIN))
        acc = _linear(u, params, noise, f"layers.{i}.down", sigma_shift)
        x = intops.saturate(x.to(torch.int32) + (acc >> intops.matmul_shift(u.shape[-1])))
    acc = _linear(intops.int_norm(x), params, noise, "head", sigma_shift)
    return intops.rescale(acc, intops.matmul_shift(h, HEAD_GAIN))


def parameter_count(config: EggConfig) -> int:
    return sum(m * n for m, n in config.shapes().values())
