"""Retrieval on embeddings: nearest neighbours, Recall@k, P@1, R-Precision and MAP@R."""

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from hierpipe.errors import HierpipeError
from hierpipe.geometry import check_metric, pairwise_distances
from hierpipe.metrics._validate import as_tensor, check_count, check_ks, check_labels

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


def _check_in_ball(name: str, x: torch.Tensor, curvature: float) -> None:
    if not (curvature * x.pow(2).sum(dim=1) < 1).all():
        raise HierpipeError(
            f"{name}: expected points strictly inside the Poincaré ball of radius "
            f"1/sqrt({curvature}), found a row with norm >= {curvature**-0.5:.6g}"
        )


def _search_space(
    query: Array,
    reference: Array | None,
    distance: str,
    curvature: float | None,
    chunk_size: int,
    dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated query and reference embeddings (the query itself when ``reference`` is None),
    in ``dtype``: by default float64 for ``poincare``, where 1 - c||x||^2 near the boundary
    needs it to separate near ties (hier.md 3.3), else float32."""
    check_metric(distance, curvature, "distance")
    check_count("chunk_size", chunk_size)
    if dtype is None:
        dtype = torch.float64 if distance == "poincare" else torch.float32
    q = _embeddings("query", query, dtype)
    if reference is None:
        ref = q
    else:
        ref = _embeddings("reference", reference, dtype).to(q.device)
        if ref.shape[1] != q.shape[1]:
            raise HierpipeError(
                f"reference: expected dimension {q.shape[1]} like query, got {ref.shape[1]}"
            )
    if distance == "poincare":
        _check_in_ball("query", q, curvature)
        _check_in_ball("reference", ref, curvature)
    return q, ref


def _neighbour_chunks(
    q: torch.Tensor,
    ref: torch.Tensor,
    rows: torch.Tensor,
    depth: int,
    distance: str,
    curvature: float | None,
    self_reference: bool,
    chunk_size: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(rows, neighbours)`` chunk by chunk: the ``depth`` nearest references of the
    queries ``q[rows]``, nearest first; memory is O(chunk_size x len(ref))."""
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        dist = pairwise_distances(q[chunk], ref, distance, curvature)
        if self_reference:
            dist[torch.arange(len(chunk), device=q.device), chunk] = float("inf")
        yield chunk, torch.topk(dist, depth, dim=1, largest=False).indices


def nearest_neighbours(
    query: Array,
    k: int,
    reference: Array | None = None,
    distance: str = "cosine",
    *,
    curvature: float | None = None,
    chunk_size: int = 1024,
    dtype: torch.dtype | None = None,
) -> np.ndarray:
    """(Nq, k) indices into ``reference`` of each query's k nearest references, nearest first.

    Without ``reference`` the query set is its own reference and each query's own row is
    excluded by index (proxydr.md 6.4: "the first element of the sorted order is dropped").
    k larger than the number of available references is an error. ``distance``, ``curvature``,
    chunking and ``dtype`` as in ``retrieval_metrics``; the order among equally distant
    references is unspecified.
    """
    q, ref = _search_space(query, reference, distance, curvature, chunk_size, dtype)
    self_reference = reference is None
    k = check_count("k", k)
    available = len(ref) - int(self_reference)
    if k > available:
        raise HierpipeError(f"k: expected at most {available} (the available references), got {k}")
    rows = torch.arange(len(q), device=q.device)
    chunks = _neighbour_chunks(q, ref, rows, k, distance, curvature, self_reference, chunk_size)
    return torch.cat([neighbours for _, neighbours in chunks]).cpu().numpy()


def retrieval_metrics(
    query: Array,
    query_labels: Array,
    reference: Array | None = None,
    reference_labels: Array | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    distance: str = "cosine",
    *,
    curvature: float | None = None,
    chunk_size: int = 1024,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """Recall@k for each k in ``ks``, ``precision@1``, ``r_precision`` and ``map@r``.

    Without ``reference`` the query set is its own reference and each query's own row is
    excluded by index (duplicates of a point still count). R is the number of references
    sharing the query's label (self excluded); R-Precision and MAP@R follow Musgrave et al.,
    as in pytorch-metric-learning's ``AccuracyCalculator``.

    Queries with R = 0 are left out of every average, as ``AccuracyCalculator`` does with
    its "lone" queries (it has no Recall@k; the same rule keeps recall@1 == precision@1).
    If no query has R > 0, every value is NaN. A k larger than the number of available
    references is clamped to it. ``distance`` is one of ``hierpipe.geometry.METRICS``;
    ``poincare`` ranks by Poincaré distance (HIER's test-time similarity is its negative,
    hier.md 8.1), needs ``curvature`` and embeddings strictly inside that ball. Queries are
    processed ``chunk_size`` at a time, so memory is O(chunk_size x len(reference));
    computation is in ``dtype``, by default float64 for ``poincare`` and float32 otherwise.
    """
    q, ref = _search_space(query, reference, distance, curvature, chunk_size, dtype)
    q_labels = check_labels("query_labels", as_tensor("query_labels", query_labels), len(q))
    q_labels = q_labels.to(q.device)
    self_reference = reference is None
    if self_reference:
        if reference_labels is not None:
            raise HierpipeError("reference_labels: expected None when reference is None")
        ref_labels = q_labels
    else:
        if reference_labels is None:
            raise HierpipeError("reference_labels: expected labels when reference is given")
        ref_labels = check_labels(
            "reference_labels", as_tensor("reference_labels", reference_labels), len(ref)
        ).to(q.device)
    ks = check_ks(ks)

    r_counts = _relevant_counts(q_labels, ref_labels) - int(self_reference)
    scored = torch.nonzero(r_counts > 0).flatten()
    names = [f"recall@{k}" for k in ks] + ["precision@1", "r_precision", "map@r"]
    if len(scored) == 0:
        return dict.fromkeys(names, float("nan"))

    available = len(ref) - int(self_reference)
    depth = min(max(*ks, int(r_counts.max())), available)
    ranks = torch.arange(1, depth + 1, device=q.device, dtype=torch.float64)
    sums = dict.fromkeys(names, 0.0)
    chunks = _neighbour_chunks(
        q, ref, scored, depth, distance, curvature, self_reference, chunk_size
    )
    for rows, neighbours in chunks:
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
