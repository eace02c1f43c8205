"""Fitness shaping: raw reward scores of a population → one fitness scalar per member.

docs/design.md §1 / EGGROLL paper §6.3. Member i answers prompts q_ij (j = slot) and scores s_ij. Group-centred fitness

    f_i = mean_j (s_ij − μ_{q_ij}) / σ̄,   μ_q = mean score of prompt q over every (member, slot) that answered it,
                                          σ̄ = std of all raw scores (+ eps),

removes per-prompt difficulty (an easy prompt everyone solves moves no member up or down), and σ̄ makes the step
size independent of the reward's scale. Centred ranks (Salimans et al. 2017, OpenAI-ES) are the scale-free
alternative. `antithetic_coefficients` then collapses the N member fitnesses into one coefficient per noise pair,
so the update touches each (A_k, B_k) once (adapter.py folds them).

All functions are pure, vectorised and fp32; none loops over members in Python.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

FITNESS_METHODS = ("group_centered", "centered_rank", "z_score", "none")


class FitnessError(ValueError):
    """A reward function returned scores that cannot be turned into fitness (wrong count, NaN/inf, non-numbers)."""


def check_scores(scores: Sequence[float | None] | Tensor, expected: int, source: str = "reward") -> Tensor:
    """A reward function's output as a float32 tensor [expected], checked where it enters the trainer.

    `None` means "not applicable to this completion" (TRL's reward-function convention, e.g. a code reward asked to
    score a maths prompt) and counts as 0.0, the score of a completion that earned nothing. Raises FitnessError
    naming `source` and the offending index for a wrong length, a non-number, NaN or ±inf.
    """
    if isinstance(scores, Tensor):
        if scores.dim() != 1:
            raise FitnessError(f"reward {source!r} returned a tensor of shape {tuple(scores.shape)}; "
                               f"return one score per completion ({expected},)")
        values = scores.to(torch.float32)
    else:
        floats = []
        for j, v in enumerate(scores):
            try:
                if isinstance(v, (str, bytes)):  # float("1") would pass: a string is a reward-function bug
                    raise TypeError
                floats.append(0.0 if v is None else float(v))
            except (TypeError, ValueError):
                raise FitnessError(f"reward {source!r} returned a non-numeric score {v!r} at index {j}; "
                                   "return a float, or None for 'not applicable'") from None
        values = torch.tensor(floats, dtype=torch.float32)
    if values.numel() != expected:
        raise FitnessError(f"reward {source!r} returned {values.numel()} scores for {expected} completions; "
                           "return exactly one score (or None) per completion")
    bad = (~torch.isfinite(values)).nonzero()
    if bad.numel():
        j = int(bad[0, 0])
        raise FitnessError(f"reward {source!r} returned {float(values[j])} at index {j} "
                           f"({bad.numel()} non-finite in all); return a finite float, or None for 'not applicable'")
    return values


def _check_grid(scores: Tensor, prompt_ids: Tensor | None) -> Tensor:
    """Scores as fp32 [N, J]; prompt_ids, when given, must name the prompt of every score."""
    if scores.dim() != 2 or scores.numel() == 0:
        raise ValueError(f"scores must be a non-empty [members, slots] matrix, got shape {tuple(scores.shape)}")
    if prompt_ids is not None and prompt_ids.shape != scores.shape:
        raise ValueError(f"prompt_ids has shape {tuple(prompt_ids.shape)} but scores has {tuple(scores.shape)}; "
                         "give the prompt id of every (member, slot) score")
    return scores.to(torch.float32)


def group_centered_fitness(scores: Tensor, prompt_ids: Tensor, eps: float = 1e-8) -> Tensor:
    """Paper §6.3 fitness: per-prompt centring, global-std scaling, mean over each member's slots → [N].

    scores: [N, J] raw rewards; prompt_ids: [N, J] any integer ids (only equality matters). A prompt whose scores
    are all equal contributes exactly 0 (its mean is taken as that value, not a rounded sum / count), so a
    population with no spread gets exactly zero fitness, never NaN.
    """
    s = _check_grid(scores, prompt_ids)
    _, group = torch.unique(prompt_ids.reshape(-1), return_inverse=True)   # [N*J] compact ids 0..Q-1
    flat = s.reshape(-1)
    q = int(group.max()) + 1
    total = torch.zeros(q, dtype=s.dtype, device=s.device).index_add_(0, group, flat)
    count = torch.zeros(q, dtype=s.dtype, device=s.device).index_add_(0, group, torch.ones_like(flat))
    lo = torch.full((q,), math.inf, dtype=s.dtype, device=s.device).scatter_reduce_(0, group, flat, "amin")
    hi = torch.full((q,), -math.inf, dtype=s.dtype, device=s.device).scatter_reduce_(0, group, flat, "amax")
    mu = torch.where(hi == lo, lo, total / count)                            # [Q]
    centred = (flat - mu[group]).view_as(s)                                  # [N, J]
    # Population std (ddof 0): defined for a single score, and the usual ES normaliser.
    spread = s.std(correction=0)
    return centred.mean(dim=1) / (spread + eps)


def centered_rank_fitness(scores: Tensor, prompt_ids: Tensor | None = None) -> Tensor:
    """Centred ranks of each member's mean score, in [-0.5, 0.5] (OpenAI-ES shaping) → [N].

    Ties share their average rank, so equal members get equal fitness and an all-equal population gets zeros.
    `prompt_ids` is accepted for a uniform signature with `group_centered_fitness` and not used: ranks are global.
    """
    member = _check_grid(scores, prompt_ids).mean(dim=1)                    # [N]
    n = member.numel()
    if n == 1:
        return torch.zeros_like(member)
    _, inverse, counts = torch.unique(member, sorted=True, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts                                # 0-based rank of each value's first copy
    rank = (first + (counts - 1) / 2).to(member.dtype)[inverse]             # average rank of a tie
    return rank / (n - 1) - 0.5


def z_score_fitness(scores: Tensor, prompt_ids: Tensor | None = None, eps: float = 1e-8) -> Tensor:
    """Each member's mean score, standardised over the population: (r_i − mean r) / (std r + eps) → [N].

    The shaping of full-parameter ES for LLMs (Qiu et al. 2025, arXiv 2509.24372). An all-equal population gets
    zeros. `prompt_ids` is accepted for the uniform signature and not used.
    """
    member = _check_grid(scores, prompt_ids).mean(dim=1)                    # [N]
    centred = member - member.mean()
    if not bool(centred.any()):
        return torch.zeros_like(member)
    return centred / (member.std(correction=0) + eps)


def unshaped_fitness(scores: Tensor, prompt_ids: Tensor | None = None) -> Tensor:
    """Each member's mean score as it is (for scores a caller already shaped) → [N]."""
    return _check_grid(scores, prompt_ids).mean(dim=1)


SHAPINGS = {"group_centered": group_centered_fitness, "centered_rank": centered_rank_fitness,
            "z_score": z_score_fitness, "none": unshaped_fitness}
FitnessShaping = Callable[[Tensor, Tensor], Tensor]


def check_fitness_method(method) -> None:
    if not callable(method) and method not in FITNESS_METHODS:
        raise ValueError(f"unknown fitness method {method!r}; choose one of {', '.join(FITNESS_METHODS)} or pass a "
                         "callable (scores [N, J], prompt_ids [N, J]) -> fitness [N]")


def resolve_shaping(method: str | FitnessShaping) -> FitnessShaping:
    """A shaping function from a name in FITNESS_METHODS, or a callable (scores, prompt_ids) -> [N] as given."""
    check_fitness_method(method)
    return method if callable(method) else SHAPINGS[method]


def shape_fitness(scores: Tensor, prompt_ids: Tensor, method: str | FitnessShaping = "group_centered") -> Tensor:
    """Shape scores [N, J] (prompt_ids [N, J]) into fitness [N] with a named or given shaping; checked on the way
    out, so a user callable that returns the wrong shape or NaN is named."""
    fitness = torch.as_tensor(resolve_shaping(method)(scores, prompt_ids))
    N = scores.shape[0]
    if fitness.shape != (N,) or not bool(torch.isfinite(fitness).all()):
        raise ValueError(f"fitness shaping {getattr(method, '__name__', method)!r} returned "
                         f"{tuple(fitness.shape)} values (finite: {bool(torch.isfinite(fitness).all())}); it must "
                         f"return {N} finite values, one per member")
    return fitness.to(torch.float32)


def antithetic_coefficients(fitness: Tensor, pairs: Tensor, signs: Tensor, num_pairs: int) -> Tensor:
    """c_k = Σ_{i in pair k} f_i s_i → [P]: the weight of noise pair k in the ES step.

    Members 2k and 2k+1 share (A_k, B_k) with signs ±1 (DESIGN §1), so Σ_i f_i s_i A_i B_iᵀ = Σ_k c_k A_k B_kᵀ and the
    update needs P factor pairs, not N. fitness, signs: [N]; pairs: [N] long in [0, num_pairs).
    """
    if not (fitness.shape == pairs.shape == signs.shape) or fitness.dim() != 1:
        raise ValueError(f"fitness {tuple(fitness.shape)}, pairs {tuple(pairs.shape)} and signs "
                         f"{tuple(signs.shape)} must all be [population_size]")
    if pairs.numel() and (int(pairs.min()) < 0 or int(pairs.max()) >= num_pairs):
        raise ValueError(f"pair ids must lie in [0, {num_pairs}), got [{int(pairs.min())}, {int(pairs.max())}]")
    weighted = fitness.to(torch.float32) * signs.to(device=fitness.device, dtype=torch.float32)
    return torch.zeros(num_pairs, dtype=torch.float32, device=fitness.device).index_add_(
        0, pairs.to(fitness.device), weighted)
