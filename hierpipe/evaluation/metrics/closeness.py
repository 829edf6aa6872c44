"""Closeness keys for ranking references: larger is nearer, one matrix product per block.

Retrieval only needs each query's order of references, so any key that is strictly
decreasing in the distance will do. The keys below are symmetric in the pair, so one block
product serves both a block of queries and, transposed, the block of references it met:

- ``cosine``, ``squared_chord``, ``chord``: the cosine of the pair;
- ``euclidean``: ``-||x - y||^2``;
- ``poincare``: ``-||x - y||^2 / ((1 - c||x||^2)(1 - c||y||^2))``, the argument of the
  Poincaré distance's ``asinh`` squared (``geometry.poincare_cdist``).

Blocks are computed in float32 through the Gram form ``||x||^2 + ||y||^2 - 2<x, y>`` (one
matrix product of augmented vectors), which loses digits on near pairs; ``exact`` recomputes
chosen pairs in the requested precision from coordinate differences, and ``block_margins``
bound the float32 error so that only pairs within the bound of a decision need that
recomputation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# pairs per exact recomputation: its (pairs x D) rows stay in cache
_EXACT_CHUNK = 1024


class Closeness:
    """Closeness keys between the rows of ``query`` and of ``reference`` (both (N, D), in the
    exact ``dtype``; ``reference`` may be ``query`` itself)."""

    def __init__(
        self,
        query: torch.Tensor,
        reference: torch.Tensor,
        distance: str,
        curvature: float | None,
    ) -> None:
        self.dtype = query.dtype
        self.search_dtype = torch.float32 if query.dtype == torch.float64 else query.dtype
        self.on_sphere = distance in ("cosine", "squared_chord", "chord")
        # Without a gallery the two sides are one tensor: each quantity is computed once.
        same = reference is query
        if self.on_sphere:
            query = F.normalize(query, dim=1)
            reference = query if same else F.normalize(reference, dim=1)
        self.query, self.reference = query, reference
        self.query_norms = query.norm(dim=1)
        self.reference_norms = self.query_norms if same else reference.norm(dim=1)
        # squared norms from a float64 sum: near the ball's boundary 1 - c||x||^2 cancels
        # most digits
        self._squared_norms = None
        self.query_scale = self.reference_scale = None
        if not self.on_sphere:
            query_squared = query.double().pow(2).sum(1)
            reference_squared = query_squared if same else reference.double().pow(2).sum(1)
            self._squared_norms = (query_squared, reference_squared)
        if distance == "poincare":
            self.query_scale = 1 / (1 - curvature * query_squared).to(self.dtype)
            self.reference_scale = (
                self.query_scale if same else 1 / (1 - curvature * reference_squared).to(self.dtype)
            )
        # Each key is one dot product of augmented vectors, so a block is one matrix product:
        # x' = [2 s_x x, -s_x ||x||^2, -s_x] and y' = [s_y y, s_y, s_y ||y||^2] give
        # s_x s_y (2 <x, y> - ||x||^2 - ||y||^2) (s = 1 but for poincare); on the sphere x, y.
        # Rounding error of a float32 key: the conversion of its inputs (2u) and their dot
        # product of D + 2 terms (below (D + 2) u over 1 - (D + 2) u), each times the sum of
        # the terms' sizes, at most (|x| + |y|)^2 s_x s_y: below (D + 6) u (|x| + |y|)^2
        # s_x s_y. The margin doubles it, for the rounding of the margins and norms
        # themselves: 2 (D + 8) u (|x| + |y|)^2 s_x s_y. Zero when blocks are exact.
        unit = torch.finfo(self.search_dtype).eps / 2
        exact_blocks = self.search_dtype == self.dtype
        self._error_unit = 0.0 if exact_blocks else 2 * (query.shape[1] + 8) * unit
        self._query_fast = self._augmented(True, self.search_dtype)
        self._reference_fast = self._augmented(False, self.search_dtype)
        self._precise: tuple[torch.Tensor, torch.Tensor] | None = None  # made on first use

    def _augmented(self, query: bool, dtype: torch.dtype) -> torch.Tensor:
        """The query's or the reference's rows of the one matrix product that gives the keys
        (see __init__): computed in the exact precision, each entry rounded once to
        ``dtype``, written straight into one tensor (these are the largest arrays here)."""
        points = self.query if query else self.reference
        if self.on_sphere:
            return points.to(dtype)
        n, dim = points.shape
        scale = self.query_scale if query else self.reference_scale
        if scale is None:
            scale = points.new_ones(n)
        squared = self._squared_norms[0 if query else 1].to(points.dtype)
        augmented = points.new_empty((n, dim + 2), dtype=dtype)
        # 2 s x is (2 x) s exactly: doubling does not round
        augmented[:, :dim] = points * (2 * scale if query else scale)[:, None]
        augmented[:, dim] = -squared * scale if query else scale
        augmented[:, dim + 1] = -scale if query else squared * scale
        return augmented

    def block(
        self,
        rows: slice,
        columns: slice,
        precise: bool = False,
        out: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Keys (rows x columns) in the search precision (float32 for float64 input), or with
        ``precise`` in the exact precision, from the same augmented vectors; written into the
        first rows x columns elements of ``out`` when given (a contiguous buffer at least that
        large, which callers reuse from block to block)."""
        # where the search precision is the exact one, the fast vectors are the precise ones
        if precise and self.search_dtype != self.dtype:
            if self._precise is None:
                self._precise = (
                    self._augmented(True, self.dtype),
                    self._augmented(False, self.dtype),
                )
            query, reference = self._precise
        else:
            query, reference = self._query_fast, self._reference_fast
        query, reference = query[rows], reference[columns]
        if out is None:
            return query @ reference.T
        shape = (len(query), len(reference))
        return torch.mm(query, reference.T, out=out.view(-1)[: shape[0] * shape[1]].view(shape))

    def block_margins(self, rows: slice, columns: slice) -> tuple[torch.Tensor, torch.Tensor]:
        """Bounds on the error of ``block(rows, columns)``: one per row (over the block's
        columns) and one per column (over its rows), in the search precision."""
        x_norm, y_norm = self.query_norms[rows], self.reference_norms[columns]
        x_scale, y_scale = self._scales(rows, columns)
        row_margin = (x_norm + y_norm.max()).square() * x_scale * y_scale.max()
        column_margin = (y_norm + x_norm.max()).square() * y_scale * x_scale.max()
        return (
            (self._error_unit * row_margin).to(self.search_dtype),
            (self._error_unit * column_margin).to(self.search_dtype),
        )

    def exact(self, query_index: torch.Tensor, reference_index: torch.Tensor) -> torch.Tensor:
        """Keys of the pairs (query_index[t], reference_index[t]) in the exact precision."""
        keys = []
        for start in range(0, len(query_index), _EXACT_CHUNK):
            qi = query_index[start : start + _EXACT_CHUNK]
            ri = reference_index[start : start + _EXACT_CHUNK]
            # index_select and in place: a third less memory traffic than x[qi] - y[ri]
            x = self.query.index_select(0, qi)
            y = self.reference.index_select(0, ri)
            if self.on_sphere:
                keys.append(x.mul_(y).sum(1))
                continue
            key = x.sub_(y).square_().sum(1).neg_()
            if self.query_scale is not None:
                key *= self.query_scale[qi] * self.reference_scale[ri]
            keys.append(key)
        if not keys:
            return self.query.new_empty(0)
        return torch.cat(keys)

    def _scales(self, rows: slice, columns: slice) -> tuple[torch.Tensor, torch.Tensor]:
        if self.query_scale is None:
            one = self.query.new_ones(1)
            return one, one
        return self.query_scale[rows], self.reference_scale[columns]
