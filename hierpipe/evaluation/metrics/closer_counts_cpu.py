"""The retrieval sweep's work on one block of float32 keys (`retrieval._CloserCounts.add`) as
compiled CPU passes.

A block entry is a candidate if it is at least its query's floor. Each candidate is placed
among its query's relevant keys by one binary search and counted once, at the first relevant
reference it is surely closer than; one within the error margin of a relevant key is handed
back, to be decided by its exact key. As tensor operations this is a dozen passes and gathers
per block; here each query's entries are read once, and the few candidates are placed where
they are found. The values are those of the tensor operations, decision for decision.
"""

from __future__ import annotations

import numba
import numpy as np
from numba.cpython.unsafe.numbers import trailing_zeros

# Entries of a row are compared with their floors a tile at a time, and where a tile has a
# candidate, each _MASK_BITS of its entries give a bit mask of the candidates, visited bit by
# bit: no branch per entry, which mispredicts where candidates are dense (a query far from
# its relevant references).
_TILE = 128
_MASK_BITS = 64


@numba.njit(inline="always")
def _count_at_most(ascending: np.ndarray, row: int, length: int, target: float) -> int:
    """How many of ascending[row, :length] are <= target (torch.searchsorted, right=True)."""
    low, high = 0, length
    while low < high:
        middle = (low + high) >> 1
        if ascending[row, middle] <= target:
            low = middle + 1
        else:
            high = middle
    return low


@numba.njit(inline="always")
def _any_candidate(
    line: np.ndarray,
    start: int,
    stop: int,
    least: float,
    column_floor: np.ndarray,
    both: bool,
) -> bool:
    """Whether line[start:stop] has an entry at least the row's floor `least` or, if
    `both`, at least its column's floor."""
    # int32 flags over 1-d views, not bools: the comparisons then vectorise
    tile = line[start:stop]
    hit = np.int32(0)
    if both:
        floors = column_floor[start:stop]
        for offset in range(len(tile)):
            hit |= np.int32(tile[offset] >= least) | np.int32(tile[offset] >= floors[offset])
    else:
        for offset in range(len(tile)):
            hit |= np.int32(tile[offset] >= least)
    return hit != 0


@numba.njit(inline="always")
def _mask_at_least(values: np.ndarray, floor: float) -> np.uint64:
    """Bit i set where values[i] >= floor (len(values) <= 64)."""
    mask = np.uint64(0)
    for offset in range(len(values)):
        mask |= np.uint64(values[offset] >= floor) << np.uint64(offset)
    return mask


@numba.njit(inline="always")
def _mask_at_least_each(values: np.ndarray, floors: np.ndarray) -> np.uint64:
    """Bit i set where values[i] >= floors[i] (len(values) <= 64)."""
    mask = np.uint64(0)
    for offset in range(len(values)):
        mask |= np.uint64(values[offset] >= floors[offset]) << np.uint64(offset)
    return mask


@numba.njit(inline="always")
def _take(
    value: float,
    margin: float,
    query: int,
    reference: int,
    negated: np.ndarray,
    counts: np.ndarray,
    zero: float,
    tallies: np.ndarray,
    tally: int,
    collect: bool,
    slot: int,
    unsure_query: np.ndarray,
    unsure_reference: np.ndarray,
) -> bool:
    """Place one candidate: when counting, count it in row `tally` of `tallies` if it is
    sure; when collecting, write it at `slot` if it is not. True if it is unsure."""
    first = _first_surely_beaten(value, margin, query, negated, counts, zero)
    if first >= 0:
        if not collect:
            tallies[tally, first] += 1
        return False
    if collect:
        unsure_query[slot] = query
        unsure_reference[slot] = reference
    return True


@numba.njit(inline="always")
def _first_surely_beaten(
    value: float, margin: float, query: int, negated: np.ndarray, counts: np.ndarray, zero: float
) -> int:
    """The first of the query's relevant keys (nearest first) that the candidate is surely
    closer than (its count of them when none), or -1 if one is within `margin` of it."""
    # in the relevant keys' precision (`zero` is 0 of their type), as the tensor path is
    v, m = value + zero, margin + zero
    # relevant keys >= v - m, that is negated keys <= m - v: not surely beaten
    kept = _count_at_most(negated, query, counts[query], m - v)
    # unsure if the last of them is not surely nearer (> v + m): the tensor path's second
    # search, which counts the surely nearer ones, would stop short of `kept`
    if kept > 0 and negated[query, kept - 1] >= -m - v:
        return -1
    return kept


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
    revisit: np.ndarray,
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
    (runs x columns), the queries with candidates are marked in `touched` and the rows with
    unsure ones in `revisit`. Collecting: a second pass over those rows writes the unsure
    ones' (query, reference) from `unsure_offset` on: rows' first, then each run's columns'.
    """
    collect = len(unsure_offset) > 0
    both = len(column_floor) > 0
    rows, columns = keys.shape
    runs = len(bounds) - 1
    # each run counts the columns' candidates on its own, so that no two threads add to
    # the same count; the runs' counts are summed afterwards
    # (run, column) flattened to run * columns + column
    column_counts = np.zeros((runs * (columns if both else 0), first_closer.shape[1]), np.int64)
    column_candidates = np.zeros(runs, np.int64)
    column_base = rows
    for run in numba.prange(runs):
        column_seen = np.zeros(columns if both else 0, np.int64)
        for row in range(bounds[run], bounds[run + 1]):
            if collect and not revisit[row]:
                continue
            query = row_start + row
            least = row_floor[row]
            line = keys[row]
            row_seen = 0
            columns_unsure_here = 0
            for tile in range(0, columns, _TILE):
                tile_stop = min(tile + _TILE, columns)
                if not _any_candidate(line, tile, tile_stop, least, column_floor, both):
                    continue
                for start in range(tile, tile_stop, _MASK_BITS):
                    stop = min(start + _MASK_BITS, tile_stop)
                    row_mask = _mask_at_least(line[start:stop], least)
                    if row_mask:
                        touched[query] = True
                    while row_mask:
                        column = start + trailing_zeros(row_mask)
                        row_mask &= row_mask - np.uint64(1)
                        slot = unsure_offset[row] + row_seen if collect else 0
                        row_seen += _take(
                            line[column],
                            row_margin[row],
                            query,
                            column_start + column,
                            negated,
                            counts,
                            zero,
                            first_closer,
                            query,
                            collect,
                            slot,
                            unsure_query,
                            unsure_reference,
                        )
                    if not both:
                        continue
                    column_mask = _mask_at_least_each(line[start:stop], column_floor[start:stop])
                    while column_mask:
                        column = start + trailing_zeros(column_mask)
                        column_mask &= column_mask - np.uint64(1)
                        column_candidates[run] += 1
                        slot = (
                            unsure_offset[column_base + run * columns + column]
                            + column_seen[column]
                            if collect
                            else 0
                        )
                        unsure = _take(
                            line[column],
                            column_margin[column],
                            column_start + column,
                            row_start + row,
                            negated,
                            counts,
                            zero,
                            column_counts,
                            run * columns + column,
                            collect,
                            slot,
                            unsure_query,
                            unsure_reference,
                        )
                        column_seen[column] += unsure
                        columns_unsure_here += unsure
            if not collect:
                row_unsure[row] = row_seen
                revisit[row] = row_seen + columns_unsure_here > 0
        if not collect and both:
            column_unsure[run] = column_seen
    # most blocks have no column candidates at all
    if not collect and column_candidates.sum() > 0:
        per_column = column_counts.reshape(runs, columns, -1).sum(axis=0)
        first_closer[column_start : column_start + columns] += per_column
        for column in range(columns):
            if per_column[column].any() or column_unsure[:, column].any():
                touched[column_start + column] = True
