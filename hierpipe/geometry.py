"""Pairwise similarities and distances between two sets of row vectors."""

import torch
import torch.nn.functional as F

from hierpipe.errors import HierpipeError

METRICS = ("cosine", "chord", "euclidean")


def _check_pair(x: torch.Tensor, y: torch.Tensor) -> None:
    if x.ndim != 2 or y.ndim != 2:
        raise HierpipeError(
            f"x and y: expected 2-D (N, D) tensors, got {tuple(x.shape)} and {tuple(y.shape)}"
        )
    if x.shape[1] != y.shape[1]:
        raise HierpipeError(
            f"x and y: expected the same feature dimension, got {x.shape[1]} and {y.shape[1]}"
        )


def cosine_similarity_matrix(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of ``x`` with every row of ``y``; shape (len(x), len(y)).

    Zero rows have similarity 0 with everything (``F.normalize`` leaves them at zero).
    """
    _check_pair(x, y)
    return F.normalize(x, dim=1) @ F.normalize(y, dim=1).T


def pairwise_distances(x: torch.Tensor, y: torch.Tensor, metric: str = "cosine") -> torch.Tensor:
    """Distance of every row of ``x`` to every row of ``y``; shape (len(x), len(y)).

    ``cosine``: 1 - cos; ``chord``: Euclidean distance between the L2-normalised rows,
    sqrt(2 - 2 cos); ``euclidean``: plain Euclidean distance.
    """
    if metric == "cosine":
        return 1.0 - cosine_similarity_matrix(x, y)
    if metric == "chord":
        # Rounding can push 2 - 2cos slightly below zero for (near-)identical rows.
        return torch.sqrt(torch.clamp(2.0 - 2.0 * cosine_similarity_matrix(x, y), min=0.0))
    if metric == "euclidean":
        _check_pair(x, y)
        return torch.cdist(x, y)
    raise HierpipeError(f"metric: unknown {metric!r}, expected one of {', '.join(METRICS)}")
