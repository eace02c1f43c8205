"""Optimizers of the ES step, as objects passed to `EggrollES(optimizer=...)` (optax style): SGD and Adam.

The ES core hands an optimizer the ascent direction g of one θ tensor (1/σ divided out, docs/design.md §1) and gets
back the direction to step along; the θ store then applies θ ← θ + lr·d − lr·wd·θ in place, or folds lr·d into the
adapter (es.py). Where θ lives does not matter to the optimizer, so every optimizer works in both modes.

    EggrollES(model, ..., optimizer=SGD(lr=0.05, momentum=0.9))     # heavy ball
    EggrollES(model, ..., optimizer=Adam(lr=1e-3))                   # Adam's normalised moments of the ES gradient
    EggrollES(model, ..., optimizer="adam", lr=1e-3)                 # the same by name (OPTIMIZERS)

State lives in the optimizer (`state_dict` / `load_state_dict`, fp32, keyed by θ tensor name), so a checkpoint of the
ES object resumes exactly. `lr` may be changed between steps (the trainer's `es.lr_schedule` does).
"""

from __future__ import annotations

from torch import Tensor

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8  # Kingma & Ba's defaults


def check_optimizer(lr: float, momentum: float, weight_decay: float) -> None:
    """Refuse settings that make the update diverge or flip sign every step (μ ≥ 1, lr·wd ≥ 1)."""
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"momentum must lie in [0, 1) (heavy ball: μ ≥ 1 never forgets a step), got {momentum}")
    if not (weight_decay >= 0 and lr * weight_decay < 1):
        raise ValueError(f"weight_decay must be >= 0 with lr * weight_decay < 1 (each step keeps 1 - lr * weight_decay "
                         f"of the parameters), got weight_decay {weight_decay} at lr {lr}")


class Optimizer:
    """Base class: `direction(name, g, t)` maps the ES gradient of θ tensor `name` at step t (1-based) to the step
    direction; the ES core multiplies by lr (and by the tensor's sigma_scale when `scale_free`)."""

    lr: float
    weight_decay: float = 0.0
    # True when the direction has a fixed scale whatever g's (Adam): the tensor's relative scale re-enters after it
    scale_free: bool = False

    def __init__(self) -> None:
        self.state: dict[str, tuple[Tensor, ...]] = {}

    def direction(self, name: str, g: Tensor, t: int) -> Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Tensor]:
        return {f"optimizer.{name}.{i}": v.cpu().contiguous() for name, vs in self.state.items()
                for i, v in enumerate(vs)}

    def load_state_dict(self, state: dict[str, Tensor], devices: dict[str, object]) -> None:
        """Restore the buffers saved by `state_dict`; `devices` maps each θ tensor name to its device."""
        self.state = {}
        for name, device in devices.items():
            prefix = f"optimizer.{name}."
            parts = sorted((k for k in state if k.startswith(prefix) and k[len(prefix):].isdigit()),
                           key=lambda k: int(k[len(prefix):]))
            if parts:
                self.state[name] = tuple(state[k].to(device) for k in parts)


class SGD(Optimizer):
    """Plain SGD (the paper's), optionally heavy-ball momentum v ← μ v + g and decoupled weight decay."""

    def __init__(self, lr: float, momentum: float = 0.0, weight_decay: float = 0.0):
        check_optimizer(lr, momentum, weight_decay)
        super().__init__()
        self.lr, self.momentum, self.weight_decay = lr, momentum, weight_decay

    def direction(self, name: str, g: Tensor, t: int) -> Tensor:
        if not self.momentum:
            return g
        if name in self.state:  # out of place: g may alias the strategy's tensors
            g = self.state[name][0] * self.momentum + g
        self.state[name] = (g,)
        return g

    def __repr__(self) -> str:
        return f"SGD(lr={self.lr}, momentum={self.momentum}, weight_decay={self.weight_decay})"


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015) on the ES gradient: bias-corrected m̂ / (√v̂ + ε), dense moments of each θ tensor."""

    scale_free = True

    def __init__(self, lr: float, betas: tuple[float, float] = ADAM_BETAS, eps: float = ADAM_EPS,
                 weight_decay: float = 0.0):
        check_optimizer(lr, 0.0, weight_decay)
        if not (0 <= betas[0] < 1 and 0 <= betas[1] < 1) or not eps > 0:
            raise ValueError(f"Adam needs betas in [0, 1) and eps > 0, got betas {betas}, eps {eps}")
        super().__init__()
        self.lr, self.betas, self.eps, self.weight_decay = lr, tuple(betas), eps, weight_decay

    def direction(self, name: str, g: Tensor, t: int) -> Tensor:
        b1, b2 = self.betas
        m, v = self.state.get(name, (g.new_zeros(g.shape), g.new_zeros(g.shape)))
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        self.state[name] = (m, v)
        return (m / (1 - b1 ** t)) / ((v / (1 - b2 ** t)).sqrt() + self.eps)

    def __repr__(self) -> str:
        return f"Adam(lr={self.lr}, betas={self.betas}, eps={self.eps}, weight_decay={self.weight_decay})"


OPTIMIZERS = {"sgd": SGD, "adam": Adam}


def resolve_optimizer(spec: Optimizer | str, lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> Optimizer:
    """An optimizer object as given, or one built by name from OPTIMIZERS with these settings."""
    if isinstance(spec, Optimizer):
        return spec
    if spec == "sgd":
        return SGD(lr, momentum, weight_decay)
    if spec == "adam":
        if momentum:
            raise ValueError("momentum is SGD's; Adam keeps its own moments (betas): set momentum 0 with adam")
        return Adam(lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)} or an eggroll_llm.optim.Optimizer, "
                     f"got {spec!r}")
