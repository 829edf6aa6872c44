"""The retrieval sweep's work on one block of float32 keys (`retrieval._CloserCounts.add`) as
compiled CPU passes.

A block entry is a candidate if it is at least its query's floor. Each candidate is placed
among its query's relevant keys by two binary searches and counted once, at the first relevant
reference it is surely closer than; one within the error margin of a relevant key is handed
back, to be decided by its exact key. As tensor operations this is a dozen passes and gathers
per block; here each query's entries are read once, and the few candidates are placed where
they are found. The values are those of the tensor operations, decision for decision.
"""

from __future__ import annotations

import numba
import numpy as np

# entries of a query compared with its floor before any is looked at on its own
_TILE = 128
# queries along columns are taken 16 at a time: one 64-byte cache line of each row
_COLUMN_GROUP = 16


@numba.njit(inline="always")
def _count_at_most(ascending: np.ndarray, length: int, target: float) -> int:
    """How many of ascending[:length] are <= target (torch.searchsorted, right=True)."""
    low, high = 0, length
    while low < high:
        middle = (low + high) >> 1
        if ascending[middle] <= target:
            low = middle + 1
        else:
            high = middle
    return low


@numba.njit(inline="always")
def _count_below(ascending: np.ndarray, length: int, target: float) -> int:
    """How many of ascending[:length] are < target (torch.searchsorted, right=False)."""
    low, high = 0, length
    while low < high:
        middle = (low + high) >> 1
        if ascending[middle] < target:
            low = middle + 1
        else:
            high = middle
    return low


@numba.njit(inline="always")
def _first_surely_beaten(
    value: float, margin: float, query: int, negated: np.ndarray, counts: np.ndarray, zero: float
) -> int:
    """The first of the query's relevant keys (nearest first) that the candidate is surely
    closer than (its count of them when none), or -1 if one is within `margin` of it."""
    # in the relevant keys' precision (`zero` is 0 of their type), as the tensor path is
    v, m = value + zero, margin + zero
    relevant = counts[query]
    # relevant keys >= v - m, that is negated keys <= m - v: not surely beaten
    kept = _count_at_most(negated[query], relevant, m - v)
    # relevant keys > v + m: surely nearer than the candidate
    nearer = _count_below(negated[query], relevant, -m - v)
    return kept if nearer >= kept else -1


@numba.njit(cache=True, parallel=True)
def scan_block(
    keys: np.ndarray,
    row_floor: np.ndarray,
    row_margin: np.ndarray,
    column_floor: np.ndarray,
    column_margin: np.ndarray,
    row_start: int,
    column_start: int,
    bounds: np.ndarray,
    negated: np.ndarray,
    counts: np.ndarray,
    first_closer: np.ndarray,
    touched: np.ndarray,
    row_unsure: np.ndarray,
    column_unsure: np.ndarray,
    unsure_offset: np.ndarray,
    unsure_query: np.ndarray,
    unsure_reference: np.ndarray,
    zero: float,
) -> None:
    """One pass over a block whose rows are queries row_start + i and, if `column_floor` is
    not empty, whose columns are queries column_start + j too (each sees the other side as
    its references). Threads take the runs of rows in `bounds`.

    Counting (`unsure_offset` empty): sure candidates are counted into `first_closer`, each
    row's unsure ones into `row_unsure` (rows), each column's per run into `column_unsure`
    (runs x columns), and the queries with candidates are marked in `touched`. Collecting:
    a second pass writes the unsure ones' (query, reference) from `unsure_offset` on: rows'
    first, then each run's columns'.
    """
    collect = len(unsure_offset) > 0
    both = len(column_floor) > 0
    rows, columns = keys.shape
    runs = len(bounds) - 1
    # each run counts the columns' candidates on its own, so that no two threads add to
    # the same count; the runs' counts are summed afterwards
    column_counts = np.zeros((runs, columns if both else 0, first_closer.shape[1]), np.int64)
    column_candidates = np.zeros(runs, np.int64)
    column_base = rows
    for run in numba.prange(runs):
        column_seen = np.zeros(columns if both else 0, np.int64)
        for row in range(bounds[run], bounds[run + 1]):
            query = row_start + row
            least = row_floor[row]
            line = keys[row]
            row_seen = 0
            for start in range(0, columns, _TILE):
                stop = min(start + _TILE, columns)
                # int32 flags over 1-d views, not bools: the comparisons then vectorise
                tile = line[start:stop]
                hit = np.int32(0)
                if both:
                    floors = column_floor[start:stop]
                    for offset in range(len(tile)):
                        hit |= np.int32(tile[offset] >= least) | np.int32(
                            tile[offset] >= floors[offset]
                        )
                else:
                    for offset in range(len(tile)):
                        hit |= np.int32(tile[offset] >= least)
                if hit == 0:
                    continue
                for column in range(start, stop):
                    value = keys[row, column]
                    if value >= least:
                        touched[query] = True
                        first = _first_surely_beaten(
                            value, row_margin[row], query, negated, counts, zero
                        )
                        if first < 0:
                            if collect:
                                slot = unsure_offset[row] + row_seen
                                unsure_query[slot] = query
                                unsure_reference[slot] = column_start + column
                            row_seen += 1
                        elif not collect:
                            first_closer[query, first] += 1
                    if both and value >= column_floor[column]:
                        column_candidates[run] += 1
                        first = _first_surely_beaten(
                            value,
                            column_margin[column],
                            column_start + column,
                            negated,
                            counts,
                            zero,
                        )
                        if first < 0:
                            if collect:
                                slot = (
                                    unsure_offset[column_base + run * columns + column]
                                    + column_seen[column]
                                )
                                unsure_query[slot] = column_start + column
                                unsure_reference[slot] = row_start + row
                            column_seen[column] += 1
                        elif not collect:
                            column_counts[run, column, first] += 1
            if not collect:
                row_unsure[row] = row_seen
        if not collect and both:
            column_unsure[run] = column_seen
    # most blocks have no column candidates at all
    if not collect and column_candidates.sum() > 0:
        per_column = column_counts.sum(axis=0)
        first_closer[column_start : column_start + columns] += per_column
        for column in range(columns):
            if per_column[column].any() or column_unsure[:, column].any():
                touched[column_start + column] = True
