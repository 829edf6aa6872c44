import decimal
import math
from decimal import Decimal

import geoopt
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hierpipe.core.errors import HierpipeError
from hierpipe.core.geometry import (
    ToPoincare,
    clip_features,
    cosine_similarity_matrix,
    pairwise_distances,
    poincare_ball,
    poincare_cdist,
    to_poincare,
)


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


def test_squared_chord_is_twice_cosine_distance_and_chord_squared(xy):
    x, y = xy
    squared = pairwise_distances(x, y, "squared_chord")
    torch.testing.assert_close(squared, 2 * pairwise_distances(x, y, "cosine"))
    torch.testing.assert_close(squared, pairwise_distances(x, y, "chord") ** 2)
    assert (pairwise_distances(x, x, "squared_chord") >= 0).all()


# --- Poincaré ball (hier.md section 3) ---


def _ball_points(
    n: int, dim: int, curvature: float, dtype: torch.dtype, seed: int, max_fraction: float = 1.0
) -> torch.Tensor:
    """Random directions with norms up to ``max_fraction * (1 - 1e-3) / sqrt(c)``; the norm
    fractions are biased towards the boundary."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=dtype), dim=1)
    fraction = 1 - torch.rand(n, 1, generator=g, dtype=dtype) ** 4
    return direction * fraction * max_fraction * (1 - 1e-3) / math.sqrt(curvature)


def test_poincare_ball_follows_geoopts_positive_curvature_convention():
    ball = poincare_ball(0.1)
    assert isinstance(ball, geoopt.PoincareBall)
    assert ball.c.item() == pytest.approx(0.1, rel=1e-15)
    assert ball.k.item() == pytest.approx(-0.1, rel=1e-15)  # sectional curvature -c
    inside = torch.tensor([[0.0, 0.99 / math.sqrt(0.1)]], dtype=torch.float64)
    outside = torch.tensor([[0.0, 1.01 / math.sqrt(0.1)]], dtype=torch.float64)
    assert ball.check_point_on_manifold(inside)
    assert not ball.check_point_on_manifold(outside)


@pytest.mark.parametrize("curvature", [0.0, -0.1, float("nan")])
def test_curvature_must_be_positive(curvature):
    x = torch.zeros(2, 3)
    calls = [
        lambda: poincare_ball(curvature),
        lambda: to_poincare(x, curvature, 2.3),
        lambda: ToPoincare(curvature, 2.3),
        lambda: poincare_cdist(x, x, curvature),
        lambda: pairwise_distances(x, x, "poincare", curvature=curvature),
    ]
    for call in calls:
        with pytest.raises(HierpipeError, match=rf"curvature: must be > 0, got {curvature}"):
            call()


def test_poincare_metric_needs_curvature_and_others_refuse_it():
    x = torch.zeros(2, 3)
    with pytest.raises(HierpipeError, match="curvature: required for metric 'poincare'"):
        pairwise_distances(x, x, "poincare")
    with pytest.raises(HierpipeError, match=r"only applies to metric 'poincare'.*'cosine'"):
        pairwise_distances(x, x, "cosine", curvature=0.1)


def _decimal_poincare_dist(x: list[float], y: list[float], curvature: float) -> float:
    """hyptorch's ``(2/sqrt(c)) artanh(sqrt(c) ||(-x) (+)_c y||)`` (hier.md 3.3) in 60-digit
    decimal arithmetic, from the exact values of the float inputs."""
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        c = Decimal(curvature)
        a, b = [-Decimal(v) for v in x], [Decimal(v) for v in y]
        ab = sum(p * q for p, q in zip(a, b, strict=True))
        a2, b2 = sum(p * p for p in a), sum(q * q for q in b)
        denominator = 1 + 2 * c * ab + c * c * a2 * b2
        mobius = [
            ((1 + 2 * c * ab + c * b2) * p + (1 - c * a2) * q) / denominator
            for p, q in zip(a, b, strict=True)
        ]
        t = c.sqrt() * sum(v * v for v in mobius).sqrt()
        return float(2 / c.sqrt() * ((1 + t) / (1 - t)).ln() / 2)


def _reference_cdist(x: torch.Tensor, y: torch.Tensor, curvature: float) -> torch.Tensor:
    rows = [[_decimal_poincare_dist(a, b, curvature) for b in y.tolist()] for a in x.tolist()]
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 2e-6), (torch.float64, 1e-12)])
@settings(max_examples=25, deadline=None)
@given(
    curvature=st.floats(0.01, 10.0),
    dim=st.integers(1, 16),
    seed=st.integers(0, 2**31 - 1),
    max_fraction=st.sampled_from([0.5, 1.0]),
)
def test_poincare_cdist_matches_high_precision_arithmetic(
    dtype, rtol, curvature, dim, seed, max_fraction
):
    x = _ball_points(6, dim, curvature, dtype, seed, max_fraction)
    # two close pairs as well, where cancellation would show
    y = torch.cat([_ball_points(4, dim, curvature, dtype, seed + 1, max_fraction), x[:2] * 0.999])
    got = poincare_cdist(x, y, curvature)
    assert got.dtype == dtype and got.shape == (6, 6)
    torch.testing.assert_close(got.double(), _reference_cdist(x, y, curvature), rtol=rtol, atol=0)


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("max_fraction", [0.6, 1.0])
def test_poincare_cdist_matches_geoopt(dtype, rtol, max_fraction):
    x = _ball_points(20, 16, 0.1, dtype, 0, max_fraction)
    y = _ball_points(30, 16, 0.1, dtype, 1, max_fraction)
    precision = dtype
    if max_fraction == 1.0:
        # near the boundary geoopt's artanh form is itself off by up to ~1e-2 in float32 and
        # ~4e-10 in float64 (the decimal comparison above checks the tighter bounds)
        precision, rtol = torch.float64, max(rtol, 1e-9)
    expected = poincare_ball(0.1).dist(x.to(precision)[:, None], y.to(precision)[None])
    got = poincare_cdist(x, y, 0.1)
    torch.testing.assert_close(got.double(), expected.double(), rtol=rtol, atol=0)


def test_poincare_distance_from_origin_is_twice_the_clipped_tangent_norm():
    # hier.md 3.4: d(0, exp_0(u)) = 2 ||u|| for the clipped tangent vector u
    x = torch.randn(50, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = x * torch.linspace(0.01, 2, 50, dtype=torch.float64)[:, None]
    d = poincare_cdist(to_poincare(x, 0.1, 2.3), torch.zeros(1, 16, dtype=torch.float64), 0.1)
    expected = 2 * clip_features(x, 2.3).norm(dim=1)
    torch.testing.assert_close(d[:, 0], expected, rtol=1e-10, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_poincare_cdist_self_pairs_are_zero_with_finite_correct_gradients(dtype):
    z = _ball_points(12, 6, 0.1, dtype, 4).requires_grad_(True)
    d = poincare_cdist(z, z, 0.1)
    assert (torch.diagonal(d) == 0).all()
    d.sum().backward()
    assert torch.isfinite(z.grad).all()
    # the self-pairs contribute nothing, so the gradient is that of the off-diagonal pairs
    ref = z.detach().double().requires_grad_(True)
    i, j = torch.triu_indices(12, 12, offset=1)
    (2 * poincare_ball(0.1).dist(ref[i], ref[j])).sum().backward()
    torch.testing.assert_close(
        z.grad.double(), ref.grad, rtol=1e-3 if dtype == torch.float32 else 1e-8, atol=1e-5
    )


def test_poincare_gradients_pass_gradcheck_at_and_around_the_clip_radius():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(5, 4, dtype=torch.float64, generator=g)
    radius = torch.tensor([0.5, 2.3, 2.3 + 1e-6, 2.3 - 1e-6, 10.0], dtype=torch.float64)
    x = (x / x.norm(dim=1, keepdim=True) * radius[:, None]).requires_grad_(True)
    y = torch.randn(3, 4, dtype=torch.float64, generator=g).requires_grad_(True)

    def distances(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return poincare_cdist(to_poincare(a, 0.1, 2.3), to_poincare(b, 0.1, 2.3), 0.1)

    assert torch.autograd.gradcheck(distances, (x, y))
    exact_radius = (x.detach() / x.detach().norm(dim=1, keepdim=True) * 2.3).requires_grad_(True)
    distances(exact_radius, exact_radius).sum().backward()
    assert torch.isfinite(exact_radius.grad).all()


@settings(max_examples=50, deadline=None)
@given(
    clip_r=st.floats(0.1, 10.0),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**31 - 1),
)
def test_clip_features_caps_the_norm_and_keeps_the_direction(clip_r, scale, seed):
    x = torch.randn(8, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    x = x * scale
    norm = x.norm(dim=1, keepdim=True)
    clipped = clip_features(x, clip_r)
    expected = torch.where(norm + 1e-5 > clip_r, x * clip_r / (norm + 1e-5), x)
    torch.testing.assert_close(clipped, expected, rtol=1e-12, atol=0)
    assert (clipped.norm(dim=1) <= clip_r).all()


def test_clip_features_rejects_a_non_positive_radius():
    with pytest.raises(HierpipeError, match=r"clip_r: must be > 0, got 0\.0"):
        clip_features(torch.ones(1, 2), 0.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("magnitude", [1e3, 1e10, 1e15])
@pytest.mark.parametrize("clip_r", [2.3, 1e4])
def test_to_poincare_stays_strictly_inside_the_ball(dtype, magnitude, clip_r):
    curvature = 0.1
    x = torch.randn(16, 32, dtype=dtype, generator=torch.Generator().manual_seed(0)) * magnitude
    z = to_poincare(x, curvature, clip_r)
    norm = z.double().norm(dim=1)
    assert torch.isfinite(z).all()
    assert (norm <= (1 - 1e-3) / math.sqrt(curvature) * (1 + 1e-6)).all()
    assert (curvature * norm**2 < 1).all()
    torch.testing.assert_close(
        torch.nn.functional.normalize(z, dim=1), torch.nn.functional.normalize(x, dim=1)
    )


def test_to_poincare_is_clip_then_expmap0():
    x = torch.randn(20, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 2
    u = clip_features(x, 2.3)
    expected = torch.tanh(math.sqrt(0.1) * u.norm(dim=1, keepdim=True)) * u
    expected = expected / (math.sqrt(0.1) * u.norm(dim=1, keepdim=True))
    torch.testing.assert_close(to_poincare(x, 0.1, 2.3), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(ToPoincare(0.1, 2.3)(x), expected, rtol=1e-12, atol=0)
    assert (to_poincare(torch.zeros(2, 8), 0.1, 2.3) == 0).all()


def test_to_poincare_riemannian_rescales_only_the_gradient():
    x = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 3
    upstream = torch.randn(6, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    plain_x = x.clone().requires_grad_(True)
    riem_x = x.clone().requires_grad_(True)
    plain = to_poincare(plain_x, 0.1, 2.3)
    riem = to_poincare(riem_x, 0.1, 2.3, riemannian=True)
    torch.testing.assert_close(riem, plain, rtol=0, atol=0)
    scale = (1 - 0.1 * plain.detach().pow(2).sum(dim=1, keepdim=True)) ** 2 / 4
    riem.backward(upstream)
    plain.backward(upstream * scale)
    torch.testing.assert_close(riem_x.grad, plain_x.grad, rtol=1e-12, atol=0)


def test_hyperbolic_maths_runs_in_float32_for_half_inputs():
    x = torch.randn(4, 3).half()
    z = to_poincare(x, 0.1, 2.3)
    assert z.dtype == torch.float32
    assert poincare_cdist(z.half(), z.half(), 0.1).dtype == torch.float32
