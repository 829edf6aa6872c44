"""Retrieval on embeddings: nearest neighbours, Recall@k, P@1, R-Precision and MAP@R."""

from collections.abc import Iterator, Sequence

import numpy as np
import torch

from hierpipe.core.errors import HierpipeError
from hierpipe.core.geometry import check_metric, pairwise_distances
from hierpipe.core.validation import as_tensor, check_in_ball, check_int, check_ks, check_labels
from hierpipe.evaluation.metrics.closeness import Closeness

Array = np.ndarray | torch.Tensor

# references per tile of a similarity block whose maximum is checked before its entries
_TILE = 64
# the least sweep (queries x references) that the CPU kernel takes: 4096 x 4096
_COMPILED_PAIRS = 2**24
# the most counts the CPU kernel's threads keep for a block's columns (32 MB of int64)
_KERNEL_COUNTS = 2**22


def _embeddings(name: str, x: Array, dtype: torch.dtype) -> torch.Tensor:
    t = as_tensor(name, x, dtype)
    if t.ndim != 2 or t.shape[0] == 0 or t.shape[1] == 0:
        raise HierpipeError(
            f"{name}: expected a non-empty (N, D) array, got shape {tuple(t.shape)}"
        )
    # A sum is NaN or Inf when any element is, in one pass without a mask (10 ms instead of
    # 100 at SOP scale); only finite values summing past the largest float need the full check.
    if not torch.isfinite(t.sum()) and not torch.isfinite(t).all():
        raise HierpipeError(f"{name}: expected finite values, found NaN or Inf")
    return t


def search_space(
    query: Array,
    reference: Array | None,
    distance: str,
    curvature: float | None,
    chunk_size: int,
    dtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated query and reference embeddings (the query itself when ``reference`` is None),
    in ``dtype``: by default float64 for ``poincare``, where 1 - c||x||^2 near the boundary
    needs it to separate near ties, else float32."""
    check_metric(distance, curvature, "distance")
    check_int("chunk_size", chunk_size, 1)
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
        check_in_ball("query", q, curvature)
        check_in_ball("reference", ref, curvature)
    return q, ref


def search_labels(
    query_labels: Array,
    reference_labels: Array | None,
    q: torch.Tensor,
    ref: torch.Tensor,
    self_reference: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated int64 labels of the queries and of the references (the queries' own
    when the query set is its own reference), on the embeddings' device."""
    q_labels = check_labels("query_labels", as_tensor("query_labels", query_labels), len(q))
    q_labels = q_labels.to(q.device)
    if self_reference:
        if reference_labels is not None:
            raise HierpipeError("reference_labels: expected None when reference is None")
        return q_labels, q_labels
    if reference_labels is None:
        raise HierpipeError("reference_labels: expected labels when reference is given")
    ref_labels = check_labels(
        "reference_labels", as_tensor("reference_labels", reference_labels), len(ref)
    )
    return q_labels, ref_labels.to(q.device)


def _neighbour_chunks(
    q: torch.Tensor,
    ref: torch.Tensor,
    depth: int,
    distance: str,
    curvature: float | None,
    self_reference: bool,
    chunk_size: int,
) -> Iterator[torch.Tensor]:
    """The ``depth`` nearest references of each query, nearest first, chunk by chunk of
    queries; memory is O(chunk_size x len(ref))."""
    for start in range(0, len(q), chunk_size):
        chunk = torch.arange(start, min(start + chunk_size, len(q)), device=q.device)
        dist = pairwise_distances(q[chunk], ref, distance, curvature)
        if self_reference:
            dist[torch.arange(len(chunk), device=q.device), chunk] = float("inf")
        yield torch.topk(dist, depth, dim=1, largest=False).indices


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
    excluded by index (the ProxyDR evaluation: "the first element of the sorted order is
    dropped").
    k larger than the number of available references is an error. ``distance``, ``curvature``,
    chunking and ``dtype`` as in ``retrieval_metrics``; the order among equally distant
    references is unspecified.
    """
    q, ref = search_space(query, reference, distance, curvature, chunk_size, dtype)
    self_reference = reference is None
    k = check_int("k", k, 1)
    available = len(ref) - int(self_reference)
    if k > available:
        raise HierpipeError(f"k: expected at most {available} (the available references), got {k}")
    chunks = _neighbour_chunks(q, ref, k, distance, curvature, self_reference, chunk_size)
    return torch.cat(list(chunks)).cpu().numpy()


def retrieval_metrics(
    query: Array,
    query_labels: Array,
    reference: Array | None = None,
    reference_labels: Array | None = None,
    ks: Sequence[int] = (1, 2, 4, 8),
    distance: str = "cosine",
    *,
    curvature: float | None = None,
    chunk_size: int = 2048,
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
    references is clamped to it. ``distance`` is one of ``hierpipe.core.geometry.METRICS``;
    ``poincare`` ranks by Poincaré distance (HIER's test-time similarity is its negative,
    hier/helpers.py), needs ``curvature`` and embeddings strictly inside that ball. Comparisons
    are decided in ``dtype``, by default float64 for ``poincare`` and float32 otherwise; a
    reference exactly as close as a relevant one ranks after it.

    All the measures follow from the rank of each relevant reference, that is from how
    many other references are closer than it. These counts come from one sweep over
    ``chunk_size`` x ``chunk_size`` blocks of similarities (memory O(chunk_size^2)), in
    float32, keeping only the entries closer than a query's relevant references; within
    float32's error bound of one, a pair is recomputed in ``dtype``. Without ``reference``
    each block serves both its rows and, transposed, its columns, so every pair is computed
    once.
    """
    q, ref = search_space(query, reference, distance, curvature, chunk_size, dtype)
    self_reference = reference is None
    q_labels, ref_labels = search_labels(query_labels, reference_labels, q, ref, self_reference)
    ks = check_ks(ks)

    # Sorted by label, a query's relevant references are one contiguous run, and the
    # same-label pairs lie in the few blocks near the diagonal.
    q_order = torch.argsort(q_labels, stable=True)
    q, q_labels = q[q_order], q_labels[q_order]
    if self_reference:
        ref, ref_labels = q, q_labels
    else:
        ref_order = torch.argsort(ref_labels, stable=True)
        ref, ref_labels = ref[ref_order], ref_labels[ref_order]
    closeness = Closeness(q, ref, distance, curvature)
    relevant = _RelevantKeys(closeness, q_labels, ref_labels, self_reference)
    names = [f"recall@{k}" for k in ks] + ["precision@1", "r_precision", "map@r"]
    scored = relevant.counts > 0
    if not scored.any():
        return dict.fromkeys(names, float("nan"))

    available = len(ref) - int(self_reference)
    compiled = _compiled_sweep(closeness, min(chunk_size, len(ref)), relevant.keys.shape[1])
    sweep = _CloserCounts(closeness, relevant, min(max(ks), available), compiled)
    # Every block is written into one buffer: fresh blocks cost 8 % of an SOP-scale sweep,
    # memory that has left the caches (and its pages) each time.
    buffer = torch.empty(
        min(chunk_size, len(q)) * min(chunk_size, len(ref)),
        dtype=closeness.search_dtype,
        device=q.device,
    )
    for row_start in range(0, len(q), chunk_size):
        rows = slice(row_start, row_start + chunk_size)
        for column_start in range(row_start if self_reference else 0, len(ref), chunk_size):
            columns = slice(column_start, column_start + chunk_size)
            keys = closeness.block(rows, columns, out=buffer)
            row_labels, column_labels = q_labels[rows], ref_labels[columns]
            if row_labels[-1] >= column_labels[0] and column_labels[-1] >= row_labels[0]:
                # relevant pairs (and self) are ranked from their exact keys, not counted
                same = row_labels[:, None] == column_labels[None, :]
                keys.masked_fill_(same, float("-inf"))
            row_margin, column_margin = closeness.block_margins(rows, columns)
            # without a gallery an off-diagonal block serves its columns' queries too
            both = self_reference and column_start != row_start
            sweep.add(keys, row_start, column_start, row_margin, column_margin if both else None)
    return _measures(sweep.closer[scored], relevant.counts[scored], ks, names)


def _measures(
    closer: torch.Tensor, r_counts: torch.Tensor, ks: tuple[int, ...], names: list[str]
) -> dict[str, float]:
    """Averages over queries, from the number of irrelevant references closer than each
    relevant one (``closer``, (N, max R), relevant ones in order) and their number R."""
    closer = closer.double()
    r = r_counts.double()
    position = torch.arange(1, closer.shape[1] + 1, device=closer.device, dtype=torch.float64)
    rank = position + closer
    within_r = (position <= r[:, None]) & (rank <= r[:, None])
    first_rank = rank[:, 0]
    values = [(first_rank <= k).double() for k in ks] + [
        (first_rank == 1).double(),
        within_r.sum(dim=1) / r,
        (within_r * position / rank).sum(dim=1) / r,
    ]
    return {name: value.mean().item() for name, value in zip(names, values, strict=True)}


def entries_at_least(
    keys: torch.Tensor, floor: torch.Tensor, queries_along_columns: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """(query, reference) indices of the entries of ``keys`` at least their query's
    ``floor``. Few entries qualify, so tiles of _TILE references whose maximum falls short
    are skipped whole; the maxima are taken along memory order, which is fast both ways."""
    along = 0 if queries_along_columns else 1
    full = keys.shape[along] - keys.shape[along] % _TILE
    if queries_along_columns:
        tiles = keys[:full].unflatten(0, (-1, _TILE))  # (tile, offset, query)
        tile, query = torch.nonzero(tiles.amax(dim=1) >= floor[None, :], as_tuple=True)
        candidates = tiles[tile, :, query]
        rest = keys[full:].T
    else:
        tiles = keys[:, :full].unflatten(1, (-1, _TILE))  # (query, tile, offset)
        query, tile = torch.nonzero(tiles.amax(dim=2) >= floor[:, None], as_tuple=True)
        candidates = tiles[query, tile]
        rest = keys[:, full:]
    hit, offset = torch.nonzero(candidates >= floor[query, None], as_tuple=True)
    rest_query, rest_offset = torch.nonzero(rest >= floor[:, None], as_tuple=True)
    return (
        torch.cat([query[hit], rest_query]),
        torch.cat([tile[hit] * _TILE + offset, rest_offset + full]),
    )


class _RelevantKeys:
    """Each query's relevant references (same label, self excluded): ``counts`` (N,) and
    their exact closeness keys, nearest first, ``keys`` (N, max R), padded with +inf, and
    their negatives ``negated_keys``, ascending, padded with +inf. Labels must be sorted."""

    def __init__(
        self,
        closeness: Closeness,
        q_labels: torch.Tensor,
        ref_labels: torch.Tensor,
        self_reference: bool,
    ) -> None:
        device = q_labels.device
        starts = torch.searchsorted(ref_labels, q_labels)
        run = torch.searchsorted(ref_labels, q_labels, right=True) - starts
        query_index = torch.repeat_interleave(torch.arange(len(q_labels), device=device), run)
        ref_index = starts[query_index] + _position_in_run(run, query_index)
        if self_reference:
            keep = ref_index != query_index
            query_index, ref_index = query_index[keep], ref_index[keep]
            run = (run - 1).clamp(min=0)
        self.counts = run
        width = max(int(run.max()), 1)
        padded = torch.full(
            (len(q_labels), width), float("-inf"), dtype=closeness.dtype, device=device
        )
        slot = _position_in_run(run, query_index)
        padded[query_index, slot] = closeness.exact(query_index, ref_index)
        keys = padded.sort(dim=1, descending=True).values
        empty = torch.arange(width, device=device)[None, :] >= run[:, None]
        self.keys = keys.masked_fill_(empty, float("inf"))
        # ascending, the padding (+inf) still last
        self.negated_keys = keys.neg().masked_fill_(empty, float("inf"))


def _position_in_run(run: torch.Tensor, owner: torch.Tensor) -> torch.Tensor:
    """Position of each entry within its owner's run, for entries laid out run after run
    (``owner``: the run each entry belongs to, ``run``: the runs' lengths)."""
    run_starts = torch.cumsum(run, 0) - run
    return torch.arange(len(owner), device=owner.device) - run_starts[owner]


def _compiled_sweep(closeness: Closeness, columns: int, width: int) -> bool:
    """Whether the sweep's blocks go to the CPU kernel of closer_counts_cpu rather than
    tensor operations (any device and type): float32 blocks on the CPU, a sweep of at least
    _COMPILED_PAIRS pairs (a smaller one, such as a training job's validation, would spend
    more on loading numba than it saves), and the kernel's own counts for the block's
    columns, threads x columns x (width + 1), within _KERNEL_COUNTS (past that, classes of
    thousands of references)."""
    pairs = len(closeness.query) * len(closeness.reference)
    if (
        closeness.query.device.type != "cpu"
        or closeness.search_dtype != torch.float32
        or pairs < _COMPILED_PAIRS
    ):
        return False
    import numba  # here: only large sweeps load it

    return numba.get_num_threads() * columns * (width + 1) <= _KERNEL_COUNTS


class _CloserCounts:
    """For each query and each of its relevant references (nearest first), the number of
    irrelevant references closer than it: ``closer`` (N, max R), accumulated block by block.

    Only counts that can still change a measure are kept up to date, so each block is
    filtered by one comparison per query against its ``floor``: the farthest relevant
    reference that is still within rank R, or the nearest one while its rank can still
    decide a Recall@k (k <= max_k); past both, the query is done (floor +inf).

    An irrelevant reference is closer than a suffix of its query's relevant references, so
    each is counted once, at the first of them (``_first_closer``, (N, max R + 1); the last
    column counts those closer than none), and ``closer`` is its running sum.
    """

    def __init__(
        self, closeness: Closeness, relevant: _RelevantKeys, max_k: int, compiled: bool
    ) -> None:
        self.closeness = closeness
        self.compiled = compiled
        self.relevant = relevant
        self.max_k = max_k
        n, width = relevant.keys.shape
        device = relevant.keys.device
        self._first_closer = torch.zeros(n * (width + 1), dtype=torch.int64, device=device)
        self._touched = torch.zeros(n, dtype=torch.bool, device=device)
        self.position = torch.arange(1, width + 1, device=device)
        self.floor = relevant.keys.new_empty(n)
        self.search_floor = self.floor.new_empty(n, dtype=closeness.search_dtype)
        self._update(torch.arange(n, device=device))

    @property
    def closer(self) -> torch.Tensor:
        return self._closer_of(slice(None))

    def _closer_of(self, rows: torch.Tensor | slice) -> torch.Tensor:
        n, width = self.relevant.keys.shape
        return self._first_closer.view(n, width + 1)[rows, :width].cumsum(dim=1)

    def add(
        self,
        keys: torch.Tensor,
        query_start: int,
        reference_start: int,
        margin: torch.Tensor,
        column_margin: torch.Tensor | None = None,
    ) -> None:
        """Count the block ``keys``: its rows are queries from query_start, its columns
        references from reference_start, each entry within ``margin`` (one per row) of its
        exact value. With ``column_margin`` (one per column) its columns are also queries
        from reference_start, and its rows their references from query_start."""
        floor = self._floor(query_start, margin)
        column_floor = (
            None if column_margin is None else self._floor(reference_start, column_margin)
        )
        if self.compiled:
            query, reference = self._count_compiled(
                keys, floor, margin, column_floor, column_margin, query_start, reference_start
            )
        else:
            query, reference = self._count_tensor(
                keys, floor, margin, query_start, reference_start, False
            )
            if column_margin is not None:
                more = self._count_tensor(
                    keys, column_floor, column_margin, reference_start, query_start, True
                )
                query, reference = torch.cat([query, more[0]]), torch.cat([reference, more[1]])
        if len(query):
            self._count_exact(query, reference)
        rows = torch.nonzero(self._touched).squeeze(1)
        if len(rows):
            self._touched[rows] = False
            self._update(rows)

    def _floor(self, query_start: int, margin: torch.Tensor) -> torch.Tensor:
        """The least block key that can still change a measure, for queries from query_start."""
        return self.search_floor[query_start : query_start + len(margin)] - margin

    def _count_tensor(
        self,
        keys: torch.Tensor,
        floor: torch.Tensor,
        margin: torch.Tensor,
        query_start: int,
        reference_start: int,
        queries_along_columns: bool,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Count the candidates of ``keys`` (queries along its rows, or its columns if
        ``queries_along_columns``; entries at least their query's ``floor``) that are surely
        placed among their query's relevant keys, mark their queries touched, and return the
        others' (query, reference): within ``margin`` of a relevant key, they are decided by
        their exact key."""
        query, reference = entries_at_least(keys, floor, queries_along_columns)
        if len(query) == 0:
            return query, reference
        value = keys[reference, query] if queries_along_columns else keys[query, reference]
        value = value.to(self.relevant.keys.dtype)[:, None]
        pair_margin = margin[query].to(value.dtype)[:, None]
        query, reference = query + query_start, reference + reference_start
        self._touched[query] = True
        # relevant keys ascending (negated), so that counts are binary searches: the
        # relevant keys not surely beaten (>= value - margin), and those surely nearer
        ascending = self.relevant.negated_keys[query]
        kept = torch.searchsorted(ascending, pair_margin - value, right=True).squeeze(1)
        nearer = torch.searchsorted(ascending, -pair_margin - value).squeeze(1)
        sure = nearer >= kept
        self._count_at(query[sure], kept[sure])
        unsure = ~sure
        return query[unsure], reference[unsure]

    def _count_compiled(
        self,
        keys: torch.Tensor,
        floor: torch.Tensor,
        margin: torch.Tensor,
        column_floor: torch.Tensor | None,
        column_margin: torch.Tensor | None,
        query_start: int,
        reference_start: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``_count_tensor`` for the rows and, with ``column_floor``, the columns, in one
        pass of the CPU kernel of closer_counts_cpu; where some candidates are unsure, a
        second pass collects them."""
        # Imported here: numba, which training and export need not load.
        from hierpipe.core.kernel_threads import thread_runs
        from hierpipe.evaluation.metrics.closer_counts_cpu import scan_block

        n, width = self.relevant.keys.shape
        runs = thread_runs(len(keys))
        none = np.empty(0, np.int64)
        nothing = np.empty(0, np.float32)
        row_unsure = np.zeros(len(keys), np.int64)
        columns = 0 if column_floor is None else keys.shape[1]
        column_unsure = np.zeros((len(runs) - 1, columns), np.int64)
        shared = (
            keys.numpy(),
            floor.numpy(),
            margin.numpy(),
            nothing if column_floor is None else column_floor.numpy(),
            nothing if column_margin is None else column_margin.numpy(),
            query_start,
            reference_start,
            runs,
            self.relevant.negated_keys.numpy(),
            self.relevant.counts.numpy(),
            self._first_closer.view(n, width + 1).numpy(),
            self._touched.numpy(),
            row_unsure,
            column_unsure,
            np.zeros(len(keys), np.bool_),
        )
        zero = np.float64(0) if self.relevant.keys.dtype == torch.float64 else np.float32(0)
        scan_block(*shared, none, none, none, zero)
        unsure = np.concatenate([row_unsure, column_unsure.ravel()])
        total = int(unsure.sum())
        if total == 0:
            return torch.from_numpy(none), torch.from_numpy(none)
        offset = np.cumsum(unsure) - unsure
        query, reference = np.empty(total, np.int64), np.empty(total, np.int64)
        scan_block(*shared, offset, query, reference, zero)
        return torch.from_numpy(query), torch.from_numpy(reference)

    def _count_exact(self, query: torch.Tensor, reference: torch.Tensor) -> None:
        """Count candidates by their exact keys: a candidate is closer than the relevant
        references whose keys are below its own."""
        exact = self.closeness.exact(query, reference)
        beaten = (exact[:, None] > self.relevant.keys[query]).sum(dim=1)
        self._count_at(query, self.relevant.counts[query] - beaten)

    def _count_at(self, query: torch.Tensor, first: torch.Tensor) -> None:
        """One more irrelevant reference closer than the relevant ones from ``first`` on."""
        width = self.relevant.keys.shape[1]
        index = query * (width + 1) + first
        self._first_closer.index_add_(0, index, torch.ones_like(index))

    def _update(self, rows: torch.Tensor) -> None:
        keys = self.relevant.keys[rows]
        r = self.relevant.counts[rows]
        closer = self._closer_of(rows)
        first_rank = 1 + closer[:, 0]
        within_r = (self.position + closer <= r[:, None]).sum(dim=1)
        floor = keys.gather(1, (within_r - 1).clamp(min=0)[:, None]).squeeze(1)
        done = (first_rank > self.max_k) & (first_rank > r)
        self.floor[rows] = floor.masked_fill(done, float("inf"))
        # rounded down, so that the search-precision floor never excludes a candidate
        search = self.floor[rows].to(self.search_floor.dtype)
        too_high = search.to(self.floor.dtype) > self.floor[rows]
        self.search_floor[rows] = torch.where(
            too_high, torch.nextafter(search, search.new_tensor(float("-inf"))), search
        )
