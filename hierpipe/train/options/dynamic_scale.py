"""Dynamic scale, the AdaCos-style adaptive scale of NormFace and ProxyDR.

Formulas, source and switches: docs/methods/dynamic_scale.md.

The scale s = exp(log_s) is chosen so that the target probability p_y is steepest
(d^2 p_y / dx^2 = 0) at the median target angle of the batch: a second Adam optimiser takes
one step per training step on the squared residual of that condition. The classification
loss never moves s (its logits read `loss.scale`, a buffer).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from scipy.optimize import fsolve
from torch import Tensor

from hierpipe.core.errors import HierpipeError
from hierpipe.losses.base import ProxyClassifierLoss
from hierpipe.losses.normface import NormFaceLoss
from hierpipe.losses.proxydr import ProxyDRLoss
from hierpipe.train.options.base import OptionContext, TrainingOption

log = logging.getLogger(__name__)

# Values of the public code: the arccos argument is shrunk so that acos stays finite at +-1,
# and 1e-12 keeps d_med^s differentiable at d_med = 0.
_ACOS_SHRINK = 0.999999
_EPS = 1e-12

DR_NUMERATORS = ("public_code", "consistent")


def _dr_numerators(scale: Tensor, cosines: Tensor) -> Tensor:
    # d^-s = (d^2)^(-s/2); the clamp keeps a proxy that coincides with the embedding finite.
    return (2 - 2 * cosines).clamp_min(_EPS) ** (-scale / 2)


def _normface_numerators(scale: Tensor, cosines: Tensor) -> Tensor:
    return torch.exp(scale * cosines)


def _dr_residual(scale: Tensor, theta_med: Tensor, b_avg: Tensor) -> Tensor:
    d_med_sq = 2 - 2 * torch.cos(theta_med)
    return b_avg * (scale + 1) * (d_med_sq + _EPS) ** (scale / 2) + 1 - scale


def _normface_residual(scale: Tensor, theta_med: Tensor, b_avg: Tensor) -> Tensor:
    cos, sin_sq = torch.cos(theta_med), torch.sin(theta_med) ** 2
    return torch.exp(scale * cos) * (cos + scale * sin_sq) + b_avg * (cos - scale * sin_sq)


@dataclass(frozen=True)
class ScaleEquation:
    """The two loss-specific parts of the scale condition.

    `numerators(s, cos)`: the unnormalised probability mass of a class at cosine `cos`
    (the numerator of p_c); `residual(s, theta_med, b_avg)`: d^2 p_y / dx^2 up to a positive
    factor, for a target at angle theta_med and non-target mass b_avg.
    """

    numerators: Callable[[Tensor, Tensor], Tensor]
    residual: Callable[[Tensor, Tensor, Tensor], Tensor]


SCALE_EQUATIONS: dict[str, ScaleEquation] = {
    "proxydr": ScaleEquation(_dr_numerators, _dr_residual),
    "normface": ScaleEquation(_normface_numerators, _normface_residual),
}

# Exact classes, not isinstance: CORR subclasses ProxyDRLoss for its logits, but its
# training loss has no scale to adapt (docs/methods/corr.md).
_LOSS_KINDS: dict[type[ProxyClassifierLoss], str] = {
    ProxyDRLoss: "proxydr",
    NormFaceLoss: "normface",
}


def initial_scale(loss_kind: str, num_classes: int) -> float:
    """The scale s0 at which the condition holds for a target at pi/4 and C - 1 orthogonal
    non-targets, solved with fsolve from s = 10 as in the public code.

    For NormFace with C <= 22 no scale satisfies it; like the public code, s0 is then
    fsolve's last iterate (near the smallest residual), with a warning.
    """
    equation = SCALE_EQUATIONS[loss_kind]
    theta = torch.tensor(math.pi / 4, dtype=torch.float64)
    orthogonal = torch.zeros((), dtype=torch.float64)

    def residual(x):
        scale = torch.as_tensor(x[0], dtype=torch.float64)
        b_avg = (num_classes - 1) * equation.numerators(scale, orthogonal)
        return [equation.residual(scale, theta, b_avg).item()]

    solution, _, status, message = fsolve(residual, [10.0], full_output=True)
    if status != 1:
        log.warning(
            "dynamic scale: no %s scale solves the initial condition for %d classes (%s); "
            "starting from fsolve's last iterate %.4g",
            loss_kind,
            num_classes,
            " ".join(message.split()),
            solution[0],
        )
    return float(solution[0])


def scale_residual(loss_kind: str, scale: Tensor, theta_med: Tensor, b_avg: Tensor) -> Tensor:
    """The residual of the scale condition; differentiable in `scale`."""
    return SCALE_EQUATIONS[loss_kind].residual(scale, theta_med, b_avg)


class DynamicScale(TrainingOption):
    """Adapts `loss.scale` once per training step (NormFace and ProxyDR only).

    B_avg and theta_med are constants of the scale step, as in the public code
    (train_cifar100.py). `dr_numerator="public_code"` reproduces the public code's ProxyDR
    B_avg, which raises d^2 to the power -sqrt(s) instead of -s/2, i.e. evaluates the
    numerators at scale 2 sqrt(s); "consistent" uses d^-s, as the initial-value equation
    implies.
    """

    def __init__(self, dr_numerator: str = "public_code") -> None:
        if dr_numerator not in DR_NUMERATORS:
            raise HierpipeError(
                f"dynamic_scale dr_numerator must be one of {', '.join(DR_NUMERATORS)}, "
                f"got {dr_numerator!r}"
            )
        self.dr_numerator = dr_numerator

    def setup(self, context: OptionContext) -> None:
        """Start from the closed-form s0 for the number of classes, with its own Adam."""
        super().setup(context)
        self._loss = context.loss
        self._kind = _LOSS_KINDS[type(context.loss)]
        s0 = initial_scale(self._kind, context.loss.num_classes)
        self.log_s = torch.tensor(math.log(s0), device=context.device, requires_grad=True)
        self._optimizer = torch.optim.Adam([self.log_s], lr=context.lr)
        self._write_scale()

    def batch_residual(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The residual for one batch, differentiable in `log_s` only."""
        scale = self.log_s.double().exp()
        with torch.no_grad():
            # float64: d^-s of a non-target proxy near the embedding overflows float32
            cosines = self._loss.cosines(embeddings).double()
            angles = torch.acos(_ACOS_SHRINK * cosines.clamp(-1, 1))
            rows = torch.arange(len(labels), device=labels.device)
            # torch.median takes the lower middle value, like the public code
            theta_med = angles[rows, labels].median().clamp(max=math.pi / 4)
            numerator_scale = scale
            if self._kind == "proxydr" and self.dr_numerator == "public_code":
                numerator_scale = 2 * scale.sqrt()
            numerators = SCALE_EQUATIONS[self._kind].numerators(numerator_scale, cosines)
            # masked, not subtracted: a ProxyDR target numerator can dwarf all the others
            non_target = torch.ones_like(numerators, dtype=torch.bool)
            non_target[rows, labels] = False
            b_avg = numerators.where(non_target, 0).sum() / len(labels)
        return scale_residual(self._kind, scale, theta_med, b_avg)

    def on_batch(self, embeddings: Tensor, labels: Tensor) -> None:
        """One Adam step on the squared residual of this batch, then update `loss.scale`."""
        with torch.enable_grad():
            residual = self.batch_residual(embeddings, labels)
            if not torch.isfinite(residual):
                raise HierpipeError(
                    f"dynamic scale: non-finite residual {residual.item()} at scale "
                    f"{self.log_s.exp().item():g}"
                )
            self._optimizer.zero_grad(set_to_none=True)
            (residual**2).backward()
            self._optimizer.step()
        self._write_scale()

    @torch.no_grad()
    def _write_scale(self) -> None:
        self._loss.scale.copy_(self.log_s.exp())

    def state_dict(self) -> dict:
        return {"log_s": self.log_s.detach().clone(), "optimizer": self._optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            # in place: the Adam optimiser holds this very tensor
            self.log_s.copy_(state["log_s"])
        self._optimizer.load_state_dict(state["optimizer"])
        self._write_scale()

    def log_values(self) -> dict[str, float]:
        return {"scale": self.log_s.exp().item()}
