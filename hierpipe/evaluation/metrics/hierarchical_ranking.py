"""Hierarchical ranking measures of HAPPIER (Ramzi et al., ECCV 2022): H-AP, ASI and NDCG,
exact over each query's whole ranking (docs/methods/hierarchical_ranking_measures.md).

A reference shares depth ``l`` with a query when their classes' lowest common ancestor lies
``l`` edges below the root, and depth ``L`` (the tree's depth) when it has the query's own
class. The references sharing depth >= 1, one top-level subtree, are the query's relevant set
Omega+; every measure follows from the rank of each of them among all references, which is its
position within Omega+ plus the number of other references (depth 0) closer than it.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree
from hierpipe.core.validation import check_label_range, check_number
from hierpipe.evaluation.metrics.closeness import Closeness
from hierpipe.evaluation.metrics.retrieval import (
    Array,
    search_labels,
    search_space,
)

RELEVANCE_SCHEDULES = ("population", "level")
NAMES = ("h_ap", "asi", "ndcg")


def hierarchical_ranking_metrics(
    query: Array,
    query_labels: Array,
    tree: ClassTree,
    reference: Array | None = None,
    reference_labels: Array | None = None,
    distance: str = "cosine",
    *,
    relevance: str = "population",
    alpha: float = 1.0,
    curvature: float | None = None,
    chunk_size: int = 2048,
    dtype: torch.dtype | None = None,
) -> dict[str, float]:
    """H-AP, ASI and NDCG (keys ``h_ap``, ``asi``, ``ndcg``), averaged over the queries
    whose relevant set is not empty (NaN if none has one).

    Relevance of a reference sharing depth ``l``: ``(l / L) ** alpha``, divided with the
    ``population`` schedule (HAPPIER's default) by the number of references sharing depth
    ``l`` with the query, the query itself included when the query set is its own reference,
    as the public code counts; ``level`` leaves it undivided. NDCG's gain is ``2 ** l - 1``
    and ASI compares depths, whatever the schedule.

    Queries, references, ``distance``, ``curvature`` and ``dtype`` as in ``retrieval_metrics``
    (without ``reference`` each query's own row is excluded by index). All comparisons are
    made in ``dtype``; a depth-0 reference exactly as close as a relevant one ranks after it,
    and equally close relevant references rank in reference order. Memory is O(chunk_size^2):
    queries are taken a chunk at a time against every reference.
    """
    q, ref = search_space(query, reference, distance, curvature, chunk_size, dtype)
    self_reference = reference is None
    q_labels, ref_labels = search_labels(query_labels, reference_labels, q, ref, self_reference)
    for name, labels in (("query_labels", q_labels), ("reference_labels", ref_labels)):
        check_label_range(name, labels, tree.num_classes, " (the classes of the tree)")
    if relevance not in RELEVANCE_SCHEDULES:
        raise HierpipeError(
            f"relevance: expected one of {', '.join(RELEVANCE_SCHEDULES)}, got {relevance!r}"
        )
    alpha = check_number("alpha", alpha, positive=True)

    ancestors = _ancestor_ids(tree)
    top = torch.from_numpy(ancestors[:, 0])
    # Sorted by (top-level subtree, class), each query's relevant set is one run of references
    q_labels, ref_labels = q_labels.cpu(), ref_labels.cpu()
    num_classes = tree.num_classes
    q_order = torch.argsort(top[q_labels] * num_classes + q_labels, stable=True)
    q, q_labels = q[q_order.to(q.device)], q_labels[q_order]
    if self_reference:
        ref, ref_labels = q, q_labels
    else:
        ref_order = torch.argsort(top[ref_labels] * num_classes + ref_labels, stable=True)
        ref, ref_labels = ref[ref_order.to(ref.device)], ref_labels[ref_order]
    ref_top = top[ref_labels]
    group_start = torch.searchsorted(ref_top, top[q_labels]).numpy()
    group_stop = torch.searchsorted(ref_top, top[q_labels], right=True).numpy()
    own_column = np.arange(len(q)) if self_reference else np.full(len(q), -1)
    weights = (np.arange(tree.max_depth + 1) / tree.max_depth) ** alpha
    closeness = Closeness(q, ref, distance, curvature)
    # every reference for a chunk of queries: rows x len(ref) keys, O(chunk_size^2) memory
    rows_per_chunk = max(1, min(len(q), 4 * chunk_size * chunk_size // len(ref)))
    values = np.zeros((len(q), len(NAMES) + 1))
    for start in range(0, len(q), rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        keys = closeness.block(rows, slice(0, len(ref)), precise=True).cpu().numpy()
        _rank_rows(
            keys,
            q_labels[rows].numpy(),
            ref_labels.numpy(),
            group_start[rows],
            group_stop[rows],
            own_column[rows],
            ancestors,
            weights,
            relevance == "population",
            values[rows],
        )
    scored = values[:, -1] > 0
    if not scored.any():
        return dict.fromkeys(NAMES, float("nan"))
    means = values[scored, :-1].mean(axis=0)
    return {name: float(value) for name, value in zip(NAMES, means, strict=True)}


def _ancestor_ids(tree: ClassTree) -> np.ndarray:
    """(C, L) id of each class's ancestor at each level (its own node below a shallower
    class's leaf), so that two classes agree at a level exactly when they share the node
    there: the shared depth is the number of levels where they agree."""
    return np.stack([tree.level_labels(level) for level in range(tree.max_depth)], axis=1)


@numba.njit(cache=True, parallel=True)
def _rank_rows(
    keys: np.ndarray,
    q_labels: np.ndarray,
    ref_labels: np.ndarray,
    group_start: np.ndarray,
    group_stop: np.ndarray,
    own_column: np.ndarray,
    ancestors: np.ndarray,
    weights: np.ndarray,
    by_population: bool,
    values: np.ndarray,
) -> None:
    """Each query's H-AP, ASI, NDCG and whether it has relevant references (1 or 0), into
    ``values`` (rows x 4), from its keys against every reference (``keys``, rows x refs)."""
    for q in numba.prange(keys.shape[0]):
        relevant_keys, depth, population = _relevant_set(
            keys[q],
            q_labels[q],
            ref_labels,
            group_start[q],
            group_stop[q],
            own_column[q],
            ancestors,
        )
        if len(depth) == 0:
            continue
        order, below, ascending, lowest, scale = _sorted_on_grid(relevant_keys)
        closer = _closer_outside(
            keys[q], group_start[q], group_stop[q], ascending, below, lowest, scale
        )
        rank = np.arange(1, len(depth) + 1) + closer
        depth = depth[order[::-1]]  # nearest first
        relevance_of = weights / np.maximum(population, 1) if by_population else weights
        values[q, 0] = _h_ap(depth, rank, relevance_of)
        values[q, 1] = _asi(depth, rank)
        values[q, 2] = _ndcg(depth, rank)
        values[q, 3] = 1.0


@numba.njit(cache=True)
def _relevant_set(
    keys: np.ndarray,
    label: int,
    ref_labels: np.ndarray,
    start: int,
    stop: int,
    own_column: int,
    ancestors: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Keys and shared depths of the query's relevant references (columns start..stop-1, its
    own column left out), and how many references share each depth 0..L with it, its own
    column counted, as the public code counts."""
    levels = ancestors.shape[1]
    population = np.zeros(levels + 1, dtype=np.int64)
    size = stop - start - (1 if start <= own_column < stop else 0)
    relevant_keys = np.empty(size, dtype=keys.dtype)
    depth = np.empty(size, dtype=np.int64)
    filled = 0
    for column in range(start, stop):
        other = ref_labels[column]
        shared = levels
        if other != label:
            shared = 0
            for d in range(levels):
                shared += ancestors[other, d] == ancestors[label, d]
        population[shared] += 1
        if column != own_column:
            relevant_keys[filled] = keys[column]
            depth[filled] = shared
            filled += 1
    return relevant_keys, depth, population


# Buckets per relevant key: enough that most buckets hold at most one; a bucket holding more
# than _CROWDED keys (ties, or keys bunched far from the rest) makes sorting fall back to argsort.
_BUCKETS_PER_KEY = 4
_CROWDED = 64


@numba.njit(cache=True)
def _bucket(key: float, lowest: float, scale: float, buckets: int) -> int:
    """The bucket of ``key``: one rounded expression, monotone in the key, so that a key in
    a lower bucket is smaller."""
    return min(int((key - lowest) * scale), buckets - 1)


@numba.njit(cache=True)
def _sorted_on_grid(
    keys: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    """A query's relevant keys on a grid of equal buckets over their range: ``order``
    (ascending, ties by index descending, so that read backwards, nearest first, ties go by
    index), sorted by bucket and then within each bucket; the number of keys in lower buckets
    ``below`` (buckets + 1), the grid's ``lowest`` and ``scale``."""
    m = len(keys)
    buckets = _BUCKETS_PER_KEY * m
    lowest = np.float64(keys.min())
    span = np.float64(keys.max()) - lowest
    scale = (buckets - 1) / span if span > 0 else 0.0
    bucket = np.empty(m, dtype=np.int64)
    below = np.zeros(buckets + 1, dtype=np.int64)
    for i in range(m):
        bucket[i] = _bucket(keys[i], lowest, scale, buckets)
        below[bucket[i] + 1] += 1
    crowded = below.max() > _CROWDED
    for b in range(buckets):
        below[b + 1] += below[b]
    # one array written in both branches: numba compiles a slower loop when `order` is
    # assigned two differently made arrays
    order = np.empty(m, dtype=np.int64)
    if crowded:
        order[:] = np.argsort(-keys, kind="mergesort")[::-1]
        return order, below, keys[order], lowest, scale
    slot = below.copy()
    for i in range(m):
        order[slot[bucket[i]]] = i
        slot[bucket[i]] += 1
    for b in range(buckets):
        if below[b + 1] - below[b] > 1:
            _insertion_sort(order, below[b], below[b + 1], keys)
    return order, below, keys[order], lowest, scale


@numba.njit(cache=True)
def _closer_outside(
    keys: np.ndarray,
    start: int,
    stop: int,
    ascending: np.ndarray,
    below: np.ndarray,
    lowest: float,
    scale: float,
) -> np.ndarray:
    """For each relevant key (``ascending`` on its grid), nearest first, the number of
    ``keys`` outside columns start..stop-1 closer than it (larger); a key equal to a relevant
    one ranks after it. Keys below the farthest relevant one are skipped; the others are
    placed with one comparison when their bucket holds at most one relevant key (its pivot),
    else by search within the bucket."""
    m, buckets = len(ascending), len(below) - 1
    pivot = np.full(buckets, np.inf, dtype=ascending.dtype)
    crowded = np.zeros(buckets, dtype=np.bool_)
    for b in range(buckets):
        if below[b + 1] - below[b] == 1:
            pivot[b] = ascending[below[b]]
        crowded[b] = below[b + 1] - below[b] > 1
    # sides[2b]: keys in bucket b not above its pivot; sides[2b + 1]: above it
    sides = np.zeros(2 * buckets, dtype=np.int32)
    placed = np.zeros(m + 1, dtype=np.int64)  # by the number of relevant keys below
    grid = (ascending, below, pivot, crowded, lowest, scale)
    _place(keys[:start], grid, sides, placed)
    _place(keys[stop:], grid, sides, placed)
    for b in range(buckets):
        if not crowded[b]:
            placed[below[b]] += sides[2 * b]
            placed[below[b + 1]] += sides[2 * b + 1]
    # a key with k relevant keys below it is closer than the k farthest; nearest first,
    # position p has m - p - 1 below it
    closer = np.zeros(m, dtype=np.int64)
    running = 0
    for p in range(m):
        running += placed[m - p]
        closer[p] = running
    return closer


@numba.njit(cache=True)
def _place(keys: np.ndarray, grid: tuple, sides: np.ndarray, placed: np.ndarray) -> None:
    """Count each key above the farthest relevant one into ``sides`` by its bucket's pivot,
    or, in a bucket of several relevant keys, into ``placed`` by search."""
    ascending, below, pivot, crowded, lowest, scale = grid
    m, buckets = len(ascending), len(pivot)
    farthest = ascending[0]
    for s in keys:
        if s <= farthest:
            continue
        b = _bucket(s, lowest, scale, buckets)
        if not crowded[b]:
            sides[2 * b + (s > pivot[b])] += 1
        else:
            smaller = below[b]
            while smaller < m and ascending[smaller] < s:
                smaller += 1
            placed[smaller] += 1


@numba.njit(cache=True)
def _insertion_sort(order: np.ndarray, start: int, stop: int, keys: np.ndarray) -> None:
    """order[start:stop] by key ascending, ties by index descending."""
    for i in range(start + 1, stop):
        item = order[i]
        j = i - 1
        while j >= start and (
            keys[order[j]] > keys[item] or (keys[order[j]] == keys[item] and order[j] < item)
        ):
            order[j + 1] = order[j]
            j -= 1
        order[j + 1] = item


@numba.njit(cache=True)
def _h_ap(depth: np.ndarray, rank: np.ndarray, relevance_of: np.ndarray) -> float:
    """H-rank(k) = sum over relevant j ranked at or before k of min(rel(k), rel(j))."""
    seen = np.zeros(len(relevance_of), dtype=np.int64)
    total = weight = 0.0
    for k in range(len(depth)):
        relevance = relevance_of[depth[k]]
        seen[depth[k]] += 1
        h_rank = 0.0
        for level in range(1, len(relevance_of)):
            h_rank += min(relevance, relevance_of[level]) * seen[level]
        total += h_rank / rank[k]
        weight += relevance
    return total / weight


@numba.njit(cache=True)
def _asi(depth: np.ndarray, rank: np.ndarray) -> float:
    """Mean over n <= N of |depths of the top n & of the ideal top n| / n (multisets)."""
    m = len(depth)
    levels = depth.max()
    at_rank = np.zeros((levels + 1, m + 1), dtype=np.int64)
    in_level = np.zeros(levels + 1, dtype=np.int64)
    for k in range(m):
        in_level[depth[k]] += 1
        if rank[k] <= m:
            at_rank[depth[k], rank[k]] += 1
    retrieved = np.zeros(levels + 1, dtype=np.int64)
    total = 0.0
    for n in range(1, m + 1):
        shared = 0
        above = 0  # the ideal ranking lists deeper levels first
        for level in range(levels, 0, -1):
            retrieved[level] += at_rank[level, n]
            ideal = min(max(n - above, 0), in_level[level])
            shared += min(retrieved[level], ideal)
            above += in_level[level]
        total += shared / n
    return total / m


@numba.njit(cache=True)
def _ndcg(depth: np.ndarray, rank: np.ndarray) -> float:
    """Gain 2^l - 1 discounted by log2(1 + rank), over the ideal ranking's."""
    dcg = 0.0
    for k in range(len(depth)):
        dcg += (2.0 ** depth[k] - 1) / np.log2(1 + rank[k])
    ideal = np.sort(depth)[::-1]
    best = 0.0
    for n in range(len(ideal)):
        best += (2.0 ** ideal[n] - 1) / np.log2(2 + n)
    return dcg / best
