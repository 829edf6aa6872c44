import decimal
import math
from decimal import Decimal

import geoopt
import numpy as np
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


def _angles(x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """Angles between the rows of x and y by arccos of the normalised dot product, in NumPy."""
    a, b = x.double().numpy(), y.double().numpy()
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.arccos(np.clip(a @ b.T, -1.0, 1.0))


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 1e-5), (torch.float64, 1e-10)])
def test_chord_is_twice_the_sine_of_half_the_angle(xy, dtype, rtol):
    # the chord of the unit circle subtending angle theta has length 2 sin(theta / 2)
    x, y = (v.to(dtype) for v in xy)
    expected = 2 * np.sin(_angles(x, y) / 2)
    chord = pairwise_distances(x, y, "chord").double().numpy()
    squared = pairwise_distances(x, y, "squared_chord").double().numpy()
    np.testing.assert_allclose(chord, expected, rtol=rtol, atol=0)
    np.testing.assert_allclose(squared, expected**2, rtol=2 * rtol, atol=0)


def test_chord_by_hand():
    # directions at 0, 60, 90 and 180 degrees from (1, 0), at lengths other than 1
    x = torch.tensor([[2.0, 0.0]])
    y = torch.tensor([[5.0, 0.0], [0.5, 0.5 * math.sqrt(3)], [0.0, 3.0], [-0.1, 0.0]])
    expected = torch.tensor([[0.0, 1.0, math.sqrt(2), 2.0]])
    torch.testing.assert_close(pairwise_distances(x, y, "chord"), expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(
        pairwise_distances(x, y, "squared_chord"), expected**2, atol=1e-6, rtol=0
    )


def test_unknown_metric_names_it_and_the_known_ones(xy):
    with pytest.raises(HierpipeError, match=r"'manhattan'.*cosine, chord, euclidean"):
        pairwise_distances(*xy, metric="manhattan")


def test_dimension_mismatch():
    with pytest.raises(HierpipeError, match="feature dimension"):
        pairwise_distances(torch.ones(2, 3), torch.ones(2, 4))


def test_squared_chord_is_never_negative():
    # 2 - 2cos of a row with itself rounds to slightly below zero without the clamp
    x = torch.randn(50, 7, generator=torch.Generator().manual_seed(0)) * 3
    assert (pairwise_distances(x, x, "squared_chord") >= 0).all()


# --- Poincaré ball: the hyptorch maps of the HIER code (github.com/tjddus9597/HIER-CVPR23,
# hier/hyptorch/pmath.py and nn.py, ToPoincare), checked against geoopt and analytic cases ---


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


def _decimal_artanh(t: Decimal) -> Decimal:
    return ((1 + t) / (1 - t)).ln() / 2


def _collinear_pairs(
    n: int, dim: int, curvature: float, bits: int, seed: int, max_fraction: float
) -> tuple[list[list[float]], list[list[float]], list[float]]:
    """Pairs x = a u, y = +-b u on one line through the origin, with their exact distances.

    u is a small integer vector (a random direction) and a, b have at most `bits`
    significant bits, so every coordinate is exact in the dtype under test and each pair is
    exactly collinear. On a diameter the Poincaré distance is the difference (same side) or
    the sum (opposite sides) of the distances from the origin, (2/sqrt(c)) artanh(sqrt(c) r);
    those are evaluated in 60-digit decimal arithmetic from the exact inputs. The pairs are
    close (b a few units of the last bit below a), apart, or on opposite sides.
    """
    rng = np.random.default_rng(seed)
    sqrt_c = math.sqrt(curvature)
    xs, ys, expected = [], [], []
    with decimal.localcontext() as ctx:
        ctx.prec = 60
        root_c = Decimal(curvature).sqrt()
        for k in range(n):
            u = [0] * dim
            while not any(u):
                u = rng.integers(-7, 8, size=dim).tolist()
            norm_u = Decimal(sum(v * v for v in u)).sqrt()

            def with_bits(fraction: float, norm_u=norm_u) -> float:
                # the largest `bits`-bit number with sqrt(c) a ||u|| <= fraction (inside)
                mantissa, exponent = math.frexp(fraction / (sqrt_c * float(norm_u)))
                return math.ldexp(math.floor(mantissa * 2**bits), exponent - bits)

            # norm fractions biased towards the boundary, as in _ball_points
            a = with_bits(max_fraction * (1 - 1e-3) * (1 - rng.random() ** 4))
            kind = k % 3
            if kind == 0:
                _, exponent = math.frexp(a)
                b, sign = a - math.ldexp(int(rng.integers(1, 9)), exponent - bits), 1
            else:
                b = with_bits(max_fraction * (1 - 1e-3) * (1 - rng.random() ** 4))
                sign = 1 if kind == 1 else -1
            xs.append([a * v for v in u])
            ys.append([sign * b * v for v in u])
            to_a = _decimal_artanh(root_c * Decimal(a) * norm_u)
            to_b = _decimal_artanh(root_c * Decimal(b) * norm_u)
            expected.append(float(2 / root_c * (to_a - sign * to_b).copy_abs()))
    return xs, ys, expected


@pytest.mark.parametrize(
    ("dtype", "bits", "rtol"), [(torch.float32, 20, 2e-6), (torch.float64, 49, 1e-12)]
)
@settings(max_examples=25, deadline=None)
@given(
    curvature=st.floats(0.01, 10.0),
    dim=st.integers(1, 16),
    seed=st.integers(0, 2**31 - 1),
    max_fraction=st.sampled_from([0.5, 1.0]),
)
def test_poincare_cdist_on_a_diameter_matches_exact_arithmetic(
    dtype, bits, rtol, curvature, dim, seed, max_fraction
):
    xs, ys, expected = _collinear_pairs(9, dim, curvature, bits, seed, max_fraction)
    x, y = torch.tensor(xs, dtype=dtype), torch.tensor(ys, dtype=dtype)
    # every coordinate is exact in `dtype` (at most `bits` + 3 significant bits)
    assert x.double().tolist() == xs and y.double().tolist() == ys
    got = poincare_cdist(x, y, curvature)
    assert got.dtype == dtype
    torch.testing.assert_close(
        torch.diagonal(got).double(), torch.tensor(expected, dtype=torch.float64), rtol=rtol, atol=0
    )


def test_poincare_cdist_by_hand():
    # c = 1: cosh d = 1 + 2 ||x - y||^2 / ((1 - ||x||^2)(1 - ||y||^2)), here 1 + 2 * 0.5 / 0.75^2
    x = torch.tensor([[0.5, 0.0]], dtype=torch.float64)
    y = torch.tensor([[0.0, 0.5], [0.0, 0.0], [-0.5, 0.0]], dtype=torch.float64)
    expected = [[math.acosh(25 / 9), 2 * math.atanh(0.5), 4 * math.atanh(0.5)]]
    torch.testing.assert_close(
        poincare_cdist(x, y, 1.0), torch.tensor(expected, dtype=torch.float64), rtol=1e-14, atol=0
    )


def _geoopt_ball(curvature: float) -> geoopt.PoincareBall:
    # c as a float64 tensor, so that float64 maths sees the exact curvature
    return geoopt.PoincareBall(c=torch.tensor(curvature, dtype=torch.float64))


@pytest.mark.parametrize("max_fraction", [0.6, 1.0])
def test_poincare_cdist_is_invariant_under_mobius_translation(max_fraction):
    # Left Möbius translation z -> a (+) z is an isometry of the ball; (-x) (+) . moves x to
    # the origin (-x (+) x = 0), where d(0, w) = (2/sqrt(c)) artanh(sqrt(c) ||w||).
    ball = _geoopt_ball(0.1)
    x = _ball_points(20, 8, 0.1, torch.float64, 0, max_fraction)
    y = _ball_points(20, 8, 0.1, torch.float64, 1, max_fraction)
    a = _ball_points(20, 8, 0.1, torch.float64, 2, 0.6)
    ax, ay = ball.mobius_add(a, x, project=False), ball.mobius_add(a, y, project=False)
    # left cancellation: the translated points are the translation of x and y
    torch.testing.assert_close(ball.mobius_add(-a, ax, project=False), x, rtol=0, atol=1e-12)
    torch.testing.assert_close(ball.mobius_add(-x, x, project=False), torch.zeros_like(x))

    distances = torch.diagonal(poincare_cdist(x, y, 0.1))
    torch.testing.assert_close(
        torch.diagonal(poincare_cdist(ax, ay, 0.1)), distances, rtol=1e-9, atol=0
    )
    moved = ball.mobius_add(-x, y, project=False)
    from_origin = 2 / math.sqrt(0.1) * torch.atanh(math.sqrt(0.1) * moved.norm(dim=1))
    torch.testing.assert_close(from_origin, distances, rtol=1e-9, atol=0)


def test_poincare_cdist_is_invariant_under_rotation():
    x = _ball_points(15, 6, 0.1, torch.float64, 3)
    y = _ball_points(10, 6, 0.1, torch.float64, 4)
    rotation, _ = torch.linalg.qr(
        torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    )
    torch.testing.assert_close(
        poincare_cdist(x @ rotation, y @ rotation, 0.1),
        poincare_cdist(x, y, 0.1),
        rtol=1e-10,
        atol=0,
    )


@pytest.mark.parametrize(("dtype", "rtol"), [(torch.float32, 1e-4), (torch.float64, 1e-10)])
@pytest.mark.parametrize("max_fraction", [0.6, 1.0])
def test_poincare_cdist_matches_geoopt(dtype, rtol, max_fraction):
    x = _ball_points(20, 16, 0.1, dtype, 0, max_fraction)
    y = _ball_points(30, 16, 0.1, dtype, 1, max_fraction)
    precision = dtype
    if max_fraction == 1.0:
        # near the boundary geoopt's artanh form is itself off by up to ~1e-2 in float32 and
        # ~4e-10 in float64 (the exact cases on a diameter above check the tighter bounds)
        precision, rtol = torch.float64, max(rtol, 1e-9)
    expected = poincare_ball(0.1).dist(x.to(precision)[:, None], y.to(precision)[None])
    got = poincare_cdist(x, y, 0.1)
    torch.testing.assert_close(got.double(), expected.double(), rtol=rtol, atol=0)


def test_poincare_distance_from_origin_is_twice_the_clipped_tangent_norm():
    # d(0, exp_0(u)) = (2/sqrt(c)) artanh(tanh(sqrt(c) ||u||)) = 2 ||u|| for the clipped
    # tangent vector u
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


def test_to_poincare_is_clip_then_geoopts_expmap0():
    # norms from 0.02 to 4: on both sides of the clip radius, all inside the projection
    x = torch.randn(20, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    x = x / x.norm(dim=1, keepdim=True) * torch.linspace(0.02, 4, 20, dtype=torch.float64)[:, None]
    ball = _geoopt_ball(0.1)
    expected = ball.expmap0(clip_features(x, 2.3), project=False)
    torch.testing.assert_close(to_poincare(x, 0.1, 2.3), expected, rtol=1e-12, atol=0)
    torch.testing.assert_close(ToPoincare(0.1, 2.3)(x), expected, rtol=1e-12, atol=0)
    # log_0 undoes exp_0: the tangent vector behind each point keeps x's direction, with
    # x's norm up to the clip radius and (just under) 2.3 beyond it
    tangent = ball.logmap0(to_poincare(x, 0.1, 2.3))
    torch.testing.assert_close(
        torch.nn.functional.normalize(tangent, dim=1), torch.nn.functional.normalize(x, dim=1)
    )
    norms = x.norm(dim=1)
    expected_norms = torch.where(norms < 2.3 - 1e-5, norms, torch.full_like(norms, 2.3))
    torch.testing.assert_close(tangent.norm(dim=1), expected_norms, rtol=1e-5, atol=0)
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


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_euclidean_distances_are_exact_on_the_diagonal_and_symmetric(dtype):
    # more than 25 rows: where torch.cdist would switch to its matrix-product form
    w = torch.randn(64, 16, generator=torch.Generator().manual_seed(0), dtype=dtype)
    d = pairwise_distances(w, w, "euclidean")
    assert torch.equal(d.diagonal(), torch.zeros(64, dtype=dtype))
    assert torch.equal(d, d.T)
    brute = (w.double()[:, None, :] - w.double()[None, :, :]).pow(2).sum(-1).sqrt()
    tolerance = 1e-6 if dtype == torch.float32 else 1e-14
    torch.testing.assert_close(d.double(), brute, rtol=tolerance, atol=tolerance)
