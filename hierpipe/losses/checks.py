"""Tensor input checks shared by the losses: one-line errors naming the argument and what was
expected (scalar settings: hierpipe.checks)."""

from __future__ import annotations

import torch
from torch import Tensor

from hierpipe.errors import HierpipeError


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
