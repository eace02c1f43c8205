"""EGG's integer kernels: int8 in, int32 accumulation, int8 out; no float arithmetic anywhere in this file.

docs/egg.md explains the scheme. Fixed point: an activation or weight value v stands for v / 16 (FIXED = 4 bits),
so a standard-normal quantity is stored with standard deviation 16 and saturates at ±127 (about ±8). The model's
only nonlinearities are what integer arithmetic does anyway: saturation at ±127 after a matmul (a hard tanh),
floor rounding of shifts and divisions, and the integer normalisation. This follows the design of the EGGROLL
paper's EGG model (arXiv 2511.16652, §"EGG") and its authors' nano-egg; the code here is our own.

Each kernel is a pure function on torch integer tensors; tests/test_egg.py checks every one bit for bit against a
straightforward element-by-element reference.
"""

from __future__ import annotations

import math

import torch

FIXED = 4          # fixed-point fraction bits: 16 stands for 1.0
ONE = 1 << FIXED
MAX = 127          # int8 range is symmetric [-127, 127]; -128 never appears
LOGIT_OFFSET = MAX  # logits + 127 index the exp2 table: [0, 254]

# 2^(j/16) * 16 for j = 0..254, rounded: a logit l stands for log2-probability l/16 up to a shared constant.
# The largest entry is 2^(254/16 + 4) < 2^20, so a sum over 256 classes stays below 2^28 (int32-safe).
EXP2_TABLE = torch.tensor([round(2.0 ** (j / ONE) * ONE) for j in range(2 * MAX + 1)], dtype=torch.int32)
# 16 * log2(1 + k/256) for an 8-bit mantissa k, rounded: log2 of an int32 = exponent + this table.
MANTISSA_BITS = 8
LOG2_MANTISSA_TABLE = torch.tensor([round(ONE * math.log2(1 + k / (1 << MANTISSA_BITS)))
                                    for k in range(1 << MANTISSA_BITS)], dtype=torch.int32)


def saturate(x: torch.Tensor) -> torch.Tensor:
    """int32 -> int8, clipped to [-127, 127]: the saturating cast every layer ends with."""
    return x.clamp(-MAX, MAX).to(torch.int8)


def matmul_shift(fan_in: int, gain_shift: int = 0) -> int:
    """The right shift that rescales an int32 accumulator of `fan_in` int8 products back to fixed point.

    x (std 16) times w (std 16) summed over fan_in terms has std 256·√fan_in; shifting right by 4 + ⌊log2 √fan_in⌋
    returns std 16 to 23, like a float layer with 1/√fan_in init (a shift, not a division: floor either way).
    `gain_shift` shifts less, so the output is wider and the saturation at ±127 bends it: that is where gates and
    the MLP get their nonlinearity.
    """
    return max(0, FIXED + (fan_in.bit_length() - 1) // 2 - gain_shift)


def int_matmul(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """x [..., K] int8 (or int32 holding int8 values), w [M, K] int8 -> x wᵀ [..., M] int32.

    Exact: |sum| <= 127²·K < 2^31 for K < 2^17. Computed as (w xᵀ)ᵀ because PyTorch's CPU integer GEMM is
    about 2.5x faster in that layout than in x wᵀ.
    """
    flat = x.reshape(-1, x.shape[-1]).to(torch.int32).contiguous()
    return (w.to(torch.int32).contiguous() @ flat.T).T.contiguous().reshape(*x.shape[:-1], w.shape[0])


def lowrank_term(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, sigma_shift: int) -> torch.Tensor:
    """Each row's own low-rank perturbation of a matmul, never materialising A Bᵀ (EGGROLL, paper §4).

    x [N, T, K] int8 (row n = member n), a [N, M, r] int8 (member's A, antithetic sign applied), b [N, K, r] int8
    -> Σ_r ((x B) >> 4)·A >> sigma_shift, [N, T, M] int32. Noise entries have std 16, so A Bᵀ >> 4 has the weights'
    scale (std 16) and the shift by sigma_shift makes the perturbation σ = 2^-sigma_shift of it. Shifting x B
    first keeps the product inside int32 (|x B| < 2^22, then times 127).
    """
    xb = torch.bmm(x.to(torch.int32), b.to(torch.int32)) >> FIXED       # [N, T, r]
    a32 = a.to(torch.int32)
    out = xb[..., :1] * a32[:, None, :, 0]
    for j in range(1, a.shape[-1]):
        out += xb[..., j:j + 1] * a32[:, None, :, j]
    out >>= sigma_shift
    return out


def rescale(acc: torch.Tensor, shift: int) -> torch.Tensor:
    """int32 accumulator -> int8: arithmetic right shift (floor division by 2^shift), then saturation."""
    return saturate(acc >> shift)


def int_norm(x: torch.Tensor) -> torch.Tensor:
    """Integer normalisation of the last axis: x · 16 / mean|x|, saturated to int8.

    Plays the role of RMSNorm without a square root: the output's mean magnitude is about 16 (fixed-point 1.0)
    whatever the input's scale, so the residual stream can grow without the next layer saturating everywhere.
    One integer division per row (a 2^16 / mean|x| reciprocal), then a multiply and a shift per element.
    """
    x32 = x.to(torch.int32)
    mean_abs = torch.div(x32.abs().sum(-1, keepdim=True), x.shape[-1], rounding_mode="floor").clamp(min=1)
    reciprocal = torch.div(1 << 16, mean_abs, rounding_mode="floor")
    return saturate((x32 * reciprocal) >> (16 - FIXED))


def gated_scan(gate: torch.Tensor, candidate: torch.Tensor, reset: torch.Tensor) -> torch.Tensor:
    """minGRU recurrence in integers: h_t = h_{t-1} + ((g_t + 127)(c_t − h_{t-1}) >> 8).

    gate, candidate [N, T, H] int8; reset [N, T] bool (the input byte is the document separator 0: the state
    starts again from zero there). (g + 127)/256 in [0, 254/256] is minGRU's update gate z_t, so h_t is the
    convex mix (1 − z) h_{t-1} + z c_t rounded down; it never leaves [min, max] of h_{t-1} and c_t, so the state
    stays int8 without clipping. Gates and candidates depend on the input only (minGRU), so every matmul runs over
    all time steps at once and only this elementwise loop is sequential.
    """
    z = gate.to(torch.int32) + MAX
    c = candidate.to(torch.int32)
    h = torch.zeros_like(c[:, 0])
    keep = ~reset
    out = torch.empty_like(candidate)
    for t in range(c.shape[1]):
        h = h * keep[:, t, None]
        h = h + ((z[:, t] * (c[:, t] - h)) >> 8)
        out[:, t] = h
    return out


def int_log2(s: torch.Tensor) -> torch.Tensor:
    """16 · log2(s) for positive int32 s, rounded down to the table: exponent from comparisons, mantissa by table."""
    exponent = torch.zeros_like(s)
    for k in range(1, 31):
        exponent += (s >= (1 << k)).to(torch.int32)
    # the 8 bits below the leading one: shift right when there are more, left when fewer
    down = (exponent - MANTISSA_BITS).clamp(min=0)
    up = (MANTISSA_BITS - exponent).clamp(min=0)
    mantissa = ((s >> down) << up) & ((1 << MANTISSA_BITS) - 1)
    return exponent * ONE + LOG2_MANTISSA_TABLE[mantissa.long()]


def target_log2_prob(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Integer log2-likelihood of each target byte, in 1/16 bits: l_t − 16·log2 Σ_j 2^(l_j/16).

    logits [..., 256] int8 (l stands for a log2-probability of l/16 up to a constant), targets [...] int64.
    Σ_j 2^((l_j+127)/16) · 16 is summed from EXP2_TABLE, so the result is (l_t + 127) − (16·log2 S − 64).
    Always <= 0 up to table rounding; the fitness of a member is its sum over a window.
    """
    s = EXP2_TABLE[(logits.to(torch.int64) + LOGIT_OFFSET)].sum(-1)
    target_logit = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1).to(torch.int32)
    return (target_logit + LOGIT_OFFSET) - (int_log2(s) - FIXED * ONE)
