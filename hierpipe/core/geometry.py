"""Pairwise similarities and distances between two sets of row vectors, and the Poincaré ball.

The Poincaré ball follows the ``hyptorch`` operations of the released HIER code
(github.com/tjddus9597/HIER-CVPR23, hier/hyptorch/pmath.py and nn.py;
docs/methods/poincare_ball.md) on top of geoopt. Curvature convention: ``curvature = c > 0``
is the ball ``{x : c ||x||^2 < 1}`` of radius ``1/sqrt(c)`` and sectional curvature ``-c``,
which is exactly geoopt 0.5's ``PoincareBall(c)`` (it stores ``c`` as a positive magnitude
and reports ``k = -c``) and hyptorch's ``c``.
"""

from __future__ import annotations

import functools
import warnings
from types import ModuleType
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from hierpipe.core.errors import HierpipeError

if TYPE_CHECKING:
    import geoopt

METRICS = ("cosine", "chord", "euclidean", "squared_chord", "poincare")

# hyptorch's ``_project`` keeps ball points at most this far (relative) from the boundary
# (hier/hyptorch/pmath.py); geoopt's own default depends on the dtype (4e-3 for float32).
BOUNDARY_EPS = 1e-3

# Added to the norm in the clipping factor, as in the released ToPoincare (hyptorch/nn.py).
_CLIP_NORM_EPS = 1e-5


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim != 2 or y.ndim != 2:
        raise HierpipeError(
            f"x and y: expected 2-D (N, D) tensors, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[1] != y.shape[1]:
        raise HierpipeError(
            f"x and y: expected the same feature dimension, got {x.shape[1]} and {y.shape[1]}"
        )


def _check_curvature(curvature: float) -> float:
    if not curvature > 0:  # also rejects NaN
        raise HierpipeError(f"curvature: must be > 0, got {curvature!r}")
    return float(curvature)


def _check_clip_r(clip_r: float) -> float:
    if not clip_r > 0:  # also rejects NaN
        raise HierpipeError(f"clip_r: must be > 0, got {clip_r!r}")
    return float(clip_r)


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    # Hyperbolic maths runs in float32 or wider even under AMP: near the
    # boundary 1 - c||x||^2 is far below half precision's resolution.
    if x.dtype in (torch.float16, torch.bfloat16):
        return x.float()
    return x


@functools.cache
def _geoopt() -> tuple[ModuleType, ModuleType]:
    """geoopt and its stereographic maths, imported on first use: geoopt's package imports its
    optimisers and with them scipy.optimize, 0.7 s of every job's start-up, which jobs without
    a Poincaré ball need not pay."""
    # geoopt decorates its maps with torch.jit.script, which torch now deprecates with a
    # FutureWarning on import: noise on stderr of every `hierpipe` command, nothing to act on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
        import geoopt
        from geoopt.manifolds.stereographic import math as stereographic
    return geoopt, stereographic


def poincare_ball(curvature: float) -> geoopt.PoincareBall:
    """geoopt's Poincaré ball of radius ``1/sqrt(curvature)`` (sectional curvature ``-c``).

    ``c`` is held in float64 so that float64 computations see the exact value; as a 0-d
    tensor it does not change the dtype of float32 inputs.
    """
    c = _check_curvature(curvature)
    geoopt, _ = _geoopt()
    return geoopt.PoincareBall(c=torch.tensor(c, dtype=torch.float64))


def clip_features(x: torch.Tensor, clip_r: float) -> torch.Tensor:
    """Feature clipping (Guo et al., arXiv:2107.11472, as HIER's ToPoincare clips):
    ``x * min(1, r / (||x|| + 1e-5))`` per row.

    Rows longer than ``clip_r`` are scaled down to (just under) ``clip_r``; others are unchanged.
    """
    clip_r = _check_clip_r(clip_r)
    norm = x.norm(dim=-1, keepdim=True)
    return x * (clip_r / (norm + _CLIP_NORM_EPS)).clamp(max=1.0)


def _boundary_gap(x: torch.Tensor, c: float) -> torch.Tensor:
    """``1 - c||x||^2`` per row (twice the inverse conformal factor), in x's dtype.

    Near the boundary the subtraction cancels almost all digits of c||x||^2 (at norm
    (1 - 1e-3)/sqrt(c), about 500x its rounding error), so the O(N * D) sum runs in float64.
    """
    return (1 - c * x.double().pow(2).sum(dim=-1)).to(x.dtype)


class _RiemannianGradient(torch.autograd.Function):
    """Identity forward; backward scales the gradient by ``(1 - c||x||^2)^2 / 4``, the inverse
    squared conformal factor at the ball point x (hyptorch's pmath.RiemannianGradient).
    Unlike hyptorch, ``c`` is this call's own, not a class-wide global."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor, c: float):
        ctx.save_for_backward(x)
        ctx.c = c
        return x.clone()

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor):
        (x,) = ctx.saved_tensors
        return grad * (_boundary_gap(x, ctx.c).unsqueeze(-1).pow(2) / 4), None


def to_poincare(
    x: torch.Tensor, curvature: float, clip_r: float, riemannian: bool = False
) -> torch.Tensor:
    """Map Euclidean rows into the Poincaré ball as the released ``ToPoincare`` (hyptorch/nn.py).

    clip to ``clip_r`` -> exp_0 (``tanh(sqrt(c)||u||) u / (sqrt(c)||u||)``) -> rescale rows
    beyond ``(1 - 1e-3)/sqrt(c)`` to that norm, so outputs lie strictly inside the ball ->
    with ``riemannian=True`` the gradient preconditioning of hyptorch's RiemannianGradient,
    which the HIER head uses (hier/models/model.py). Half-precision input is computed in
    float32.
    """
    ball = poincare_ball(curvature)
    _, stereographic = _geoopt()
    u = clip_features(_at_least_float32(x), clip_r)
    # geoopt's maps are TorchScript functions; the JIT's optimised graph, swapped in after a
    # few calls, rounds differently, which would make a run's bits depend on how many calls
    # its process has made (a resumed run would differ from an uninterrupted one).
    with torch.jit.optimized_execution(False):
        z = stereographic.project(ball.expmap0(u, project=False), k=ball.k, eps=BOUNDARY_EPS)
    return _RiemannianGradient.apply(z, float(curvature)) if riemannian else z


def poincare_midpoint(points: torch.Tensor, curvature: float) -> torch.Tensor:
    """The gyromidpoint (Möbius-weighted mean with equal weights) of ball points (N, D), by
    geoopt's ``weighted_midpoint``: the hyperbolic counterpart of a mean, inside the ball."""
    ball = poincare_ball(curvature)
    with torch.jit.optimized_execution(False):  # as in to_poincare: same bits on every call
        return ball.weighted_midpoint(points, reducedim=[0])


class ToPoincare(nn.Module):
    """``to_poincare`` as a parameter-free layer, with its settings checked up front."""

    def __init__(self, curvature: float, clip_r: float, riemannian: bool = False) -> None:
        super().__init__()
        self.curvature = _check_curvature(curvature)
        self.clip_r = _check_clip_r(clip_r)
        self.riemannian = riemannian

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return to_poincare(x, self.curvature, self.clip_r, self.riemannian)

    def extra_repr(self) -> str:
        return f"curvature={self.curvature}, clip_r={self.clip_r}, riemannian={self.riemannian}"


def poincare_cdist(x: torch.Tensor, y: torch.Tensor, curvature: float) -> torch.Tensor:
    """Poincaré distance of every row of ``x`` to every row of ``y``; shape (len(x), len(y)).

    Equals geoopt's ``PoincareBall(c).dist(x[:, None], y[None])`` (hyptorch's
    ``(2/sqrt(c)) artanh(sqrt(c) ||(-x) (+)_c y||)``, pmath._dist) through the identity

        d(x, y) = (2/sqrt(c)) asinh( sqrt(c) ||x - y|| / sqrt((1 - c||x||^2)(1 - c||y||^2)) ),

    which needs only ||x - y|| and the two norms, so memory is O(len(x) * len(y)). asinh is
    accurate at 0 and smooth there, and torch.cdist's gradient at a zero distance is 0, so
    self-pairs (x_i == y_j) give distance 0 and finite gradients. Points must lie strictly
    inside the ball (``to_poincare`` guarantees it). Half-precision input is computed in
    float32.

    ||x - y|| comes from the coordinate differences, not the faster Gram-matrix form, whose
    cancellation costs about sqrt(eps) * ||x|| on near pairs (a nonzero self-distance, and a
    1e-8 relative error on close float64 pairs near the boundary); 1 - c||x||^2 is
    accumulated in float64 (``_boundary_gap``). Measured against 50-digit arithmetic at norm
    (1 - 1e-3)/sqrt(c), on close and on random pairs: relative error below 1e-13 in float64
    (geoopt: 3e-10) and 2e-7 in float32 (geoopt: 0.4 on close pairs, 1e-2 on random ones).
    """
    c = _check_curvature(curvature)
    _check_pair(x, y)
    x, y = _at_least_float32(x), _at_least_float32(y)
    diff = torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
    scale = (_boundary_gap(x, c)[:, None] * _boundary_gap(y, c)[None, :]).rsqrt()
    return (2 / c**0.5) * torch.asinh(c**0.5 * diff * scale)


def cosine_similarity_matrix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of ``x`` with every row of ``y``; shape (len(x), len(y)).

    Zero rows have similarity 0 with everything (``F.normalize`` leaves them at zero).
    """
    _check_pair(x, y)
    return F.normalize(x, dim=1) @ F.normalize(y, dim=1).T


def check_metric(metric: str, curvature: float | None, name: str = "metric") -> None:
    """Raise unless ``metric`` (called ``name`` in messages) is one of METRICS, with a
    ``curvature`` > 0 exactly when it is ``poincare``."""
    if metric not in METRICS:
        raise HierpipeError(f"{name}: unknown {metric!r}, expected one of {', '.join(METRICS)}")
    if metric == "poincare":
        if curvature is None:
            raise HierpipeError(f"curvature: required for {name} 'poincare', got None")
        _check_curvature(curvature)
    elif curvature is not None:
        raise HierpipeError(
            f"curvature: only applies to {name} 'poincare', got {curvature!r} with {metric!r}"
        )


def pairwise_distances(
    x: torch.Tensor, y: torch.Tensor, metric: str = "cosine", curvature: float | None = None
) -> torch.Tensor:
    """Distance of every row of ``x`` to every row of ``y``; shape (len(x), len(y)).

    ``cosine``: 1 - cos; ``squared_chord``: squared Euclidean distance between the
    L2-normalised rows, 2 - 2 cos (hierpipe's spherical HIER, docs/methods/hier.md);
    ``chord``: its square root; ``euclidean``: plain Euclidean distance; ``poincare``:
    ``poincare_cdist`` with ``curvature`` (required for it, and an error with any other metric).
    """
    check_metric(metric, curvature)
    if metric == "poincare":
        return poincare_cdist(x, y, curvature)
    if metric == "cosine":
        return 1.0 - cosine_similarity_matrix(x, y)
    if metric == "squared_chord":
        # Rounding can push 2 - 2cos slightly below zero for (near-)identical rows.
        return torch.clamp(2.0 - 2.0 * cosine_similarity_matrix(x, y), min=0.0)
    if metric == "chord":
        return torch.sqrt(pairwise_distances(x, y, "squared_chord"))
    _check_pair(x, y)
    # cdist's default computes ||x||^2 + ||y||^2 - 2 x.y for more than 25 rows, which leaves
    # self-distances of ~1e-3 in float32 and an asymmetric matrix whose ties break at random.
    return torch.cdist(x, y, compute_mode="donot_use_mm_for_euclid_dist")
