"""Retrieval measures on embeddings: Recall@k, P@1, R-Precision and MAP@R."""

from collections.abc import Sequence

import numpy as np
import torch

from hierpipe.errors import HierpipeError
from hierpipe.geometry import METRICS, pairwise_distances
from hierpipe.metrics._validate import as_tensor, check_ks, check_labels

Array = np.ndarray | torch.Tensor


def _embeddings(name: str, x: Array, dtype: torch.dtype) -> torch.Tensor:
    t = as_tensor(name, x, dtype)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise HierpipeError(
            f"{name}: expected a non-empty (N, D) array, got shape {tuple(t.shape)}"
        )
    if not torch.isfinite(t).all():
        raise HierpipeError(f"{name}: expected finite values, found NaN or Inf")
    return t


def _relevant_counts(query_labels: torch.Tensor, reference_labels: torch.Tensor) -> torch.Tensor:
    """Number of references sharing each query's label, without an (Nq x Nr) comparison."""
    classes, counts = torch.unique(reference_labels, return_counts=True)
    pos = torch.searchsorted(classes, query_labels).clamp(max=len(classes) - 1)
    return torch.where(classes[pos] == query_labels, counts[pos], 0)


def retrieval_metrics(
    query: Array,
    query_labels: Array,
    reference: Array | None = None,
    reference_labels: Array | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    distance: str = "cosine",
    *,
    chunk_size: int = 1024,
    dtype: torch.dtype = torch.float32,
) -> dict[str, float]:
    """Recall@k for each k in ``ks``, ``precision@1``, ``r_precision`` and ``map@r``.

    Without ``reference`` the query set is its own reference and each query's own row is
    excluded by index (duplicates of a point still count). R is the number of references
    sharing the query's label (self excluded); R-Precision and MAP@R follow Musgrave et al.,
    as in pytorch-metric-learning's ``AccuracyCalculator``.

    Queries with R = 0 are left out of every average, as ``AccuracyCalculator`` does with
    its "lone" queries (it has no Recall@k; the same rule keeps recall@1 == precision@1).
    If no query has R > 0, every value is NaN. A k larger than the number of available
    references is clamped to it. Queries are processed ``chunk_size`` at a time, so memory
    is O(chunk_size x len(reference)); computation is in ``dtype``.
    """
    q = _embeddings("query", query, dtype)
    q_labels = check_labels("query_labels", as_tensor("query_labels", query_labels), len(q))
    q_labels = q_labels.to(q.device)
    self_reference = reference is None
    if self_reference:
        if reference_labels is not None:
            raise HierpipeError("reference_labels: expected None when reference is None")
        ref, ref_labels = q, q_labels
    else:
        if reference_labels is None:
            raise HierpipeError("reference_labels: expected labels when reference is given")
        ref = _embeddings("reference", reference, dtype).to(q.device)
        if ref.shape[1] != q.shape[1]:
            raise HierpipeError(
                f"reference: expected dimension {q.shape[1]} like query, got {ref.shape[1]}"
            )
        ref_labels = check_labels(
            "reference_labels", as_tensor("reference_labels", reference_labels), len(ref)
        ).to(q.device)
    ks = check_ks(ks)
    if distance not in METRICS:
        raise HierpipeError(f"distance: unknown {distance!r}, expected one of {', '.join(METRICS)}")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise HierpipeError(f"chunk_size: expected an integer >= 1, got {chunk_size!r}")

    r_counts = _relevant_counts(q_labels, ref_labels) - int(self_reference)
    scored = torch.nonzero(r_counts > 0).flatten()
    names = [f"recall@{k}" for k in ks] + ["precision@1", "r_precision", "map@r"]
    if len(scored) == 0:
        return dict.fromkeys(names, float("nan"))

    available = len(ref) - int(self_reference)
    depth = min(max(*ks, int(r_counts.max())), available)
    ranks = torch.arange(1, depth + 1, device=q.device, dtype=torch.float64)
    sums = dict.fromkeys(names, 0.0)
    for start in range(0, len(scored), chunk_size):
        rows = scored[start : start + chunk_size]
        dist = pairwise_distances(q[rows], ref, distance)
        if self_reference:
            dist[torch.arange(len(rows), device=q.device), rows] = float("inf")
        neighbours = torch.topk(dist, depth, dim=1, largest=False).indices
        hit = ref_labels[neighbours] == q_labels[rows, None]
        r = r_counts[rows].double()
        hit_in_r = hit & (ranks <= r[:, None])
        precision_at_rank = hit_in_r.cumsum(dim=1) / ranks
        for k in ks:
            sums[f"recall@{k}"] += hit[:, : min(k, depth)].any(dim=1).sum().item()
        sums["precision@1"] += hit[:, 0].sum().item()
        sums["r_precision"] += (hit_in_r.sum(dim=1) / r).sum().item()
        sums["map@r"] += ((precision_at_rank * hit_in_r).sum(dim=1) / r).sum().item()
    return {name: total / len(scored) for name, total in sums.items()}
