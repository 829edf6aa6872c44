"""Closeness keys: float32 blocks of float64 points stay within their margins of the exact
keys, which is what lets the retrieval sweep decide every other pair from the block."""

import math

import numpy as np
import pytest
import torch

from hierpipe.evaluation.metrics.closeness import Closeness

CURVATURE = 0.1


def _points(rng: np.random.Generator, distance: str, dim: int) -> np.ndarray:
    """Points that stress the Gram form: norms spread over orders of magnitude (in the ball,
    down to 1 - c||x||^2 of about 1e-4), coordinates of one sign, and near-duplicate pairs."""
    directions = rng.standard_normal((60, dim))
    directions[:20] = np.abs(directions[:20])
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    if distance == "poincare":
        tangent = np.geomspace(1e-3, 16.5, len(directions))[:, None]
        radii = np.tanh(math.sqrt(CURVATURE) * tangent) / math.sqrt(CURVATURE)
    else:
        radii = np.geomspace(1e-2, 1e2, len(directions))[:, None]
    points = directions * rng.permutation(radii)
    twins = points[:30] * (1 + 1e-7 * rng.standard_normal((30, 1)))
    return np.concatenate([points, twins])


@pytest.mark.parametrize("distance", ["poincare", "euclidean", "cosine"])
@pytest.mark.parametrize("dim", [2, 64, 512])
def test_float32_blocks_stay_within_their_margins_of_the_float64_keys(distance, dim):
    rng = np.random.default_rng(dim)
    points = torch.from_numpy(_points(rng, distance, dim))
    closeness = Closeness(points, points, distance, CURVATURE if distance == "poincare" else None)
    n = len(points)
    rows = torch.arange(n).repeat_interleave(n)
    exact = closeness.exact(rows, torch.arange(n).repeat(n)).view(n, n)
    assert exact.dtype == torch.float64
    # blocks of several sizes: a block's margins take the largest norms within it
    for size in (n, 37, 8):
        for start in range(0, n, size):
            for other in range(0, n, size):
                block_rows, block_columns = slice(start, start + size), slice(other, other + size)
                keys = closeness.block(block_rows, block_columns)
                assert keys.dtype == torch.float32
                row_margin, column_margin = closeness.block_margins(block_rows, block_columns)
                error = (keys.double() - exact[block_rows, block_columns]).abs()
                assert (error <= row_margin.double()[:, None]).all()
                assert (error <= column_margin.double()[None, :]).all()
