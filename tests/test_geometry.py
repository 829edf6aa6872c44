import math

import pytest
import torch

from hierpipe.errors import HierpipeError
from hierpipe.geometry import cosine_similarity_matrix, pairwise_distances


def _naive(x: torch.Tensor, y: torch.Tensor, metric: str) -> torch.Tensor:
    out = torch.empty(len(x), len(y), dtype=torch.float64)
    for i, a in enumerate(x.double().tolist()):
        for j, b in enumerate(y.double().tolist()):
            dot = sum(p * q for p, q in zip(a, b, strict=True))
            na = math.sqrt(sum(p * p for p in a))
            nb = math.sqrt(sum(q * q for q in b))
            cos = dot / (na * nb)
            if metric == "cosine":
                out[i, j] = 1 - cos
            elif metric == "chord":
                ua, ub = [p / na for p in a], [q / nb for q in b]
                out[i, j] = math.dist(ua, ub)
            else:
                out[i, j] = math.dist(a, b)
    return out


@pytest.fixture
def xy() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(7, 5, generator=g) * 3, torch.randn(4, 5, generator=g)


@pytest.mark.parametrize("metric", ["cosine", "chord", "euclidean"])
def test_matches_naive_loop(xy, metric):
    x, y = xy
    got = pairwise_distances(x, y, metric)
    assert got.shape == (7, 4)
    torch.testing.assert_close(got.double(), _naive(x, y, metric), atol=1e-5, rtol=1e-5)


def test_cosine_similarity_matrix_matches_naive(xy):
    x, y = xy
    torch.testing.assert_close(
        cosine_similarity_matrix(x, y).double(), 1 - _naive(x, y, "cosine"), atol=1e-6, rtol=0
    )


def test_chord_of_identical_rows_is_zero_not_nan():
    x = torch.tensor([[1.0, 2.0, 3.0], [0.3, -0.1, 7.0]])
    d = pairwise_distances(x, x * 2.5, "chord")
    assert not torch.isnan(d).any()
    torch.testing.assert_close(torch.diagonal(d), torch.zeros(2), atol=1e-3, rtol=0)


def test_chord_is_sqrt_of_twice_cosine_distance(xy):
    x, y = xy
    torch.testing.assert_close(
        pairwise_distances(x, y, "chord") ** 2, 2 * pairwise_distances(x, y, "cosine")
    )


def test_unknown_metric_names_it_and_the_known_ones(xy):
    with pytest.raises(HierpipeError, match=r"'manhattan'.*cosine, chord, euclidean"):
        pairwise_distances(*xy, metric="manhattan")


def test_dimension_mismatch():
    with pytest.raises(HierpipeError, match="feature dimension"):
        pairwise_distances(torch.ones(2, 3), torch.ones(2, 4))
