"""Input checks shared by the losses: one-line errors naming the argument and what was expected."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from hierpipe.errors import HierpipeError


def check_int(name: str, value: object, minimum: int) -> int:
    """`value` as an int; raise unless it is an integer >= `minimum`."""
    # bool is an int subclass; True as a class count is always a config mistake.
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise HierpipeError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return value


def check_number(name: str, value: object, *, positive: bool = False) -> float:
    """`value` as a float; raise unless it is a finite real number (and > 0 if `positive`)."""
    # bool is an int subclass; True as a hyperparameter is always a config mistake.
    valid = (
        not isinstance(value, bool)
        and isinstance(value, (int, float))
        and math.isfinite(value)
        and (value > 0 or not positive)
    )
    if not valid:
        kind = "a positive finite number" if positive else "a finite number"
        raise HierpipeError(f"{name} must be {kind}, got {value!r}")
    return float(value)


def check_batch(embeddings: Tensor, labels: Tensor) -> None:
    """Raise unless `embeddings` is (N, D) with N >= 1 and `labels` an integer (N,) tensor."""
    if embeddings.dim() != 2 or embeddings.shape[0] == 0:
        raise HierpipeError(
            f"embeddings must have shape (N, D) with N >= 1, got {tuple(embeddings.shape)}"
        )
    if labels.dim() != 1 or labels.shape[0] != embeddings.shape[0]:
        raise HierpipeError(
            f"labels must have shape ({embeddings.shape[0]},) to match the embeddings, "
            f"got {tuple(labels.shape)}"
        )
    if labels.dtype.is_floating_point or labels.dtype.is_complex or labels.dtype == torch.bool:
        raise HierpipeError(f"labels must be an integer tensor, got dtype {labels.dtype}")


def check_in_ball(embeddings: Tensor, curvature: float) -> None:
    """Raise unless every row is finite and strictly inside the ball `c ||z||^2 < 1`."""
    # Rows on or beyond the boundary make every Poincaré distance to them NaN.
    inside = curvature * embeddings.detach().pow(2).sum(dim=1) < 1
    if not bool(inside.all()):
        bad = int((~inside).nonzero()[0, 0])
        raise HierpipeError(
            f"embeddings must be finite points of the Poincaré ball of curvature {curvature:g} "
            f"(c ||z||^2 < 1); row {bad} is not"
        )
