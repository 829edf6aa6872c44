"""Hyperbolic numerics under stress: no NaN or Inf, forward or backward, for inputs at and far
beyond the clipping radius in float32, and with the backbone under bf16 autocast."""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hierpipe.core.geometry import poincare_cdist, to_poincare
from hierpipe.losses import HIERLoss, ProxyAnchorLoss
from hierpipe.models import EmbeddingNet

CURVATURE = 0.1


def _finite_step(tangent: torch.Tensor, clip_r: float, seed: int) -> None:
    """PA + HIER on the mapped points, as training computes them; every value and gradient
    must be finite."""
    tangent = tangent.detach().requires_grad_(True)
    labels = torch.arange(len(tangent)) // 2
    hier = HIERLoss(
        tangent.shape[1],
        num_proxies=16,
        clip_r=clip_r,
        topk=4,
        triplets_per_anchor=5,
        generator=torch.Generator().manual_seed(seed),
    )
    proxy_anchor = ProxyAnchorLoss(int(labels.max()) + 1, tangent.shape[1])
    points = to_poincare(tangent, CURVATURE, clip_r, riemannian=True)
    distances = poincare_cdist(points, points, CURVATURE)
    loss = hier(points, labels) + proxy_anchor(points, labels) + distances.mean()
    assert torch.isfinite(points).all() and torch.isfinite(distances).all()
    assert torch.isfinite(loss)
    loss.backward()
    for name, grad in (
        ("tangent", tangent.grad),
        ("hierarchical proxies", hier.proxies.grad),
        ("class proxies", proxy_anchor.proxies.grad),
    ):
        assert grad is not None and torch.isfinite(grad).all(), name


@settings(max_examples=40, deadline=None)
@given(
    log_norm=st.floats(min_value=-6.0, max_value=12.0),
    clip_r=st.sampled_from([2.3, 10.0, 1e4]),
    seed=st.integers(0, 2**16),
)
def test_float32_inputs_at_and_beyond_the_clip_radius_stay_finite(log_norm, clip_r, seed):
    # norms from 1e-6 to 1e12: inside the radius, at it, and far beyond; with clip_r = 1e4
    # the mapped points sit at float32's closest approach to the boundary
    generator = torch.Generator().manual_seed(seed)
    directions = torch.nn.functional.normalize(torch.randn(12, 8, generator=generator), dim=1)
    norms = 10.0 ** (log_norm + torch.rand(12, 1, generator=generator))
    _finite_step(directions * norms, clip_r, seed)


def test_rows_exactly_at_the_clip_radius_and_identical_rows_stay_finite():
    direction = torch.nn.functional.normalize(torch.ones(1, 8), dim=1)
    at_radius = direction.repeat(12, 1) * 2.3  # every row the same point, at the radius
    _finite_step(at_radius, 2.3, seed=0)
    _finite_step(torch.zeros(12, 8), 2.3, seed=0)  # the origin: zero-norm tangent vectors


def test_bf16_autocast_backbone_with_poincare_head_has_finite_gradients():
    torch.manual_seed(0)
    net = EmbeddingNet("test_resnet", 8, "poincare", curvature=CURVATURE, clip_r=1e4)
    images = torch.randn(12, 3, 32, 32) * 50  # large activations drive points to the boundary
    labels = torch.arange(12) // 2
    hier = HIERLoss(8, num_proxies=16, clip_r=1e4, topk=4, triplets_per_anchor=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embeddings = net(images)
    # the engine computes losses in float32 even under autocast
    points = embeddings.float()
    assert torch.isfinite(points).all()
    assert (CURVATURE * points.double().pow(2).sum(dim=1) < 1).all()
    loss = hier(points, labels) + ProxyAnchorLoss(6, 8)(points, labels)
    assert torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in net.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert math.isfinite(float(hier.proxies.grad.norm()))
