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
from hierpipe.core.kernel_threads import thread_runs
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
    discount = np.zeros(len(ref) + 1)  # NDCG's 1 / log2(1 + rank), by rank
    discount[1:] = 1 / np.log2(1 + np.arange(1, len(ref) + 1))
    closeness = Closeness(q, ref, distance, curvature)
    # every reference for a chunk of queries: rows x len(ref) keys, O(chunk_size^2) memory,
    # in one buffer (a fresh one per chunk would fault its pages in again)
    rows_per_chunk = max(1, min(len(q), 8 * chunk_size * chunk_size // len(ref)))
    block = torch.empty((rows_per_chunk, len(ref)), dtype=q.dtype, device=q.device)
    values = np.zeros((len(q), len(NAMES) + 1))
    for start in range(0, len(q), rows_per_chunk):
        rows = slice(start, start + rows_per_chunk)
        keys = closeness.block(rows, slice(0, len(ref)), precise=True, out=block)
        keys = keys.cpu().numpy()
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
            discount,
            thread_runs(len(keys)),
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
    discount: np.ndarray,
    runs: np.ndarray,
    values: np.ndarray,
) -> None:
    """Each query's H-AP, ASI, NDCG and whether it has relevant references (1 or 0), into
    ``values`` (rows x 4), from its keys against every reference (``keys``, rows x refs);
    each thread takes one run of rows (``runs``) with its own scratch arrays."""
    widest = max(1, (group_stop - group_start).max())
    for t in numba.prange(len(runs) - 1):
        scratch = _scratch(widest, keys.shape[1])
        for q in range(runs[t], runs[t + 1]):
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
            order, closer = _closer_counts(
                keys[q], group_start[q], group_stop[q], relevant_keys, scratch
            )
            rank = np.arange(1, len(depth) + 1) + closer
            depth = depth[order]  # nearest first
            relevance_of = weights / np.maximum(population, 1) if by_population else weights
            values[q, 0] = _h_ap(depth, rank, relevance_of)
            in_level = np.bincount(depth)  # relevant references per shared depth
            values[q, 1] = _asi(depth, rank, in_level)
            values[q, 2] = _ndcg(depth, rank, in_level, discount)
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


# Buckets per relevant key of the grid over a query's relevant keys: fine enough that a
# bucket rarely holds more than two relevant keys, which every other key is compared with.
_BUCKETS_PER_KEY = 8
# relevant keys per bucket that every key is compared with (written out in `_closer_counts`);
# more, and it is searched
_STEPS = 2
# relevant keys in one bucket beyond which they are sorted by comparison, not by insertion
_CROWDED = 32


@numba.njit(cache=True)
def _scratch(widest: int, columns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One thread's scratch arrays for `_closer_counts`, sized for its widest relevant set
    and its rows' length: the count of relevant keys below each bucket, and per column its
    bucket and the columns to search."""
    return (
        np.zeros(_BUCKETS_PER_KEY * widest + 4, dtype=np.int32),
        np.empty(columns, dtype=np.int32),
        np.empty(columns, dtype=np.int32),
    )


@numba.njit(cache=True, inline="always")
def _bucket(key: float, lowest: float, scale: float, bounds: tuple) -> np.int32:
    """The bucket of ``key`` in the grid from ``lowest`` with ``scale`` buckets per unit,
    clipped to ``bounds`` (-1, buckets) in the keys' precision: one rounded expression,
    monotone in the key, so that a key in a lower bucket is smaller."""
    return np.int32(min(max((key - lowest) * scale, bounds[0]), bounds[1])) + 1


@numba.njit(cache=True)
def _closer_counts(
    keys: np.ndarray, start: int, stop: int, relevant_keys: np.ndarray, scratch: tuple
) -> tuple[np.ndarray, np.ndarray]:
    """The order of the relevant keys nearest first (equal keys by index), and for each, in
    that order, the number of ``keys`` outside columns start..stop-1 closer than it (larger);
    a key equal to a relevant one ranks after it.

    The relevant keys' range is cut into equal buckets (0 below it, ``buckets`` + 1 above),
    and the relevant keys are sorted by bucket (counting) and within it (insertion). Another
    key has as many relevant keys below it as lie in lower buckets, plus those in its own
    bucket that are smaller: at most ``_STEPS`` comparisons without a branch, or a search in
    the rare bucket that holds more."""
    first, bucket_of_column, searched = scratch
    m = len(relevant_keys)
    buckets = _BUCKETS_PER_KEY * m
    lowest = relevant_keys.min()
    span = np.float64(relevant_keys.max()) - np.float64(lowest)
    # finite and positive, so that no key's bucket is NaN; relevant keys all equal, or too
    # close for the precision, may then share a bucket
    scale = (buckets - 1) / span if span > 0 else 1.0
    scale = keys.dtype.type(min(scale, np.finfo(keys.dtype).max))
    bounds = (keys.dtype.type(-1.0), keys.dtype.type(buckets))
    for column in range(len(keys)):  # a loop that vectorises
        bucket_of_column[column] = _bucket(keys[column], lowest, scale, bounds)
    # first[b]: relevant keys in buckets below b. Counted at b + 2 and summed, first[b + 1]
    # is where bucket b starts; placing the keys moves it to where bucket b + 1 starts.
    bucket_of = np.empty(m, dtype=np.int32)
    fullest = 0
    for i in range(m):
        bucket_of[i] = _bucket(relevant_keys[i], lowest, scale, bounds)
        first[bucket_of[i] + 2] += 1
        fullest = max(fullest, first[bucket_of[i] + 2])
    for b in range(1, buckets + 4):
        first[b] += first[b - 1]
    # ascending, ties by index descending, so that read backwards, nearest first, ties go by
    # index
    order = np.empty(m, dtype=np.int64)
    if fullest > _CROWDED:  # many ties, or keys bunched far from the rest
        order[:] = np.argsort(-relevant_keys, kind="mergesort")[::-1]
        for b in range(1, buckets + 3):
            first[b] = first[b + 1]
    else:  # by bucket, each bucket's keys by index descending, then sorted within buckets
        for i in range(m - 1, -1, -1):
            order[first[bucket_of[i] + 1]] = i
            first[bucket_of[i] + 1] += 1
        for i in range(1, m):
            item = order[i]
            j = i - 1
            while j >= 0 and (
                relevant_keys[order[j]] > relevant_keys[item]
                or (relevant_keys[order[j]] == relevant_keys[item] and order[j] < item)
            ):
                order[j + 1] = order[j]
                j -= 1
            order[j + 1] = item
    ascending = np.full(m + _STEPS, np.inf, dtype=keys.dtype)  # inf: stop past the last
    ascending[:m] = relevant_keys[order]
    # placed[k]: keys with k relevant keys below. Unsigned indices: numba then leaves out
    # the wraparound of negative ones, which doubles this loop's time.
    placed = np.zeros(m + 1, dtype=np.int64)
    one, n_searched = np.uintp(1), np.uintp(0)
    for part in range(2):
        columns = range(0, start) if part == 0 else range(stop, len(keys))
        for column in columns:
            s, b = keys[column], np.uintp(bucket_of_column[column])
            crowded = first[b + one] - first[b] > _STEPS
            # the bucket's relevant keys are sorted: both comparisons at once
            k = np.uintp(first[b])
            k += np.uintp(ascending[k] < s) + np.uintp(ascending[k + one] < s)
            placed[k] += not crowded
            searched[n_searched] = column
            n_searched += np.uintp(crowded)
    for c in range(n_searched):
        s, b = keys[searched[c]], bucket_of_column[searched[c]]
        placed[first[b] + np.searchsorted(ascending[first[b] : first[b + 1]], s)] += 1
    # nearest first, position p is ascending[m - 1 - p]: closer are the keys with more than
    # m - 1 - p relevant keys below
    closer = np.empty(m, dtype=np.int64)
    running = 0
    for p in range(m):
        running += placed[m - p]
        closer[p] = running
    first[: buckets + 4] = 0
    return order[::-1], closer


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
def _asi(depth: np.ndarray, rank: np.ndarray, in_level: np.ndarray) -> float:
    """Mean over n <= N of |depths of the top n & of the ideal top n| / n (multisets);
    ``in_level``: the relevant references at each depth."""
    m = len(depth)
    levels = len(in_level) - 1
    retrieved = np.zeros(levels + 1, dtype=np.int64)
    total = 0.0
    k = 0  # ranks increase along the nearest-first order, one relevant reference per rank
    for n in range(1, m + 1):
        if rank[k] == n:
            retrieved[depth[k]] += 1
            k += 1
        shared = 0
        above = 0  # the ideal ranking lists deeper levels first
        for level in range(levels, 0, -1):
            ideal = min(max(n - above, 0), in_level[level])
            shared += min(retrieved[level], ideal)
            above += in_level[level]
        total += shared / n
    return total / m


@numba.njit(cache=True)
def _ndcg(depth: np.ndarray, rank: np.ndarray, in_level: np.ndarray, discount: np.ndarray) -> float:
    """Gain 2^l - 1 discounted by log2(1 + rank) (``discount[r]`` = 1 / log2(1 + r)), over
    the ideal ranking's, which lists deeper levels first (``in_level`` at each depth)."""
    dcg = 0.0
    for k in range(len(depth)):
        dcg += (2.0 ** depth[k] - 1) * discount[rank[k]]
    best = 0.0
    n = 1
    for level in range(len(in_level) - 1, 0, -1):
        for _ in range(in_level[level]):
            best += (2.0**level - 1) * discount[n]
            n += 1
    return dcg / best
