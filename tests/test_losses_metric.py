"""Proxy-Anchor and MS against pytorch-metric-learning, the Hyp pairwise loss against a loop,
registry and input checks (docs/methods/proxy_anchor.md, multi_similarity.md, hyp_pairwise.md)."""

from __future__ import annotations

import math

import geoopt
import pytest
import torch
from pytorch_metric_learning import losses as pml_losses

from hierpipe.core.errors import HierpipeError
from hierpipe.core.geometry import to_poincare
from hierpipe.losses import (
    HypPairwiseLoss,
    MultiSimilarityLoss,
    ProxyAnchorLoss,
    ProxyClassifierLoss,
    build_loss,
)


def _batch(seed: int, n: int, dim: int, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(n, dim, dtype=torch.float64, generator=generator)
    labels = torch.randint(0, classes, (n,), generator=generator)
    return embeddings, labels


def _assert_same_loss_and_gradients(ours, reference, embeddings, labels) -> None:
    """Our loss and pytorch-metric-learning's agree in value and embedding gradient."""
    z_ours = embeddings.clone().requires_grad_()
    z_ref = embeddings.clone().requires_grad_()
    value, expected = ours(z_ours, labels), reference(z_ref, labels)
    value.backward()
    expected.backward()
    assert value.item() == pytest.approx(expected.item(), abs=1e-5)
    torch.testing.assert_close(z_ours.grad, z_ref.grad, atol=1e-5, rtol=0)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("margin", "alpha"), [(0.1, 32.0), (0.3, 8.0)])
def test_proxy_anchor_equals_pytorch_metric_learning(seed: int, margin: float, alpha: float):
    # 10 classes, labels drawn from the first 6: at least 4 classes are absent.
    embeddings, labels = _batch(seed, n=24, dim=8, classes=6)
    ours = ProxyAnchorLoss(10, 8, margin=margin, alpha=alpha).double()
    reference = pml_losses.ProxyAnchorLoss(10, 8, margin=margin, alpha=alpha)
    reference.proxies = torch.nn.Parameter(ours.proxies.detach().clone())

    _assert_same_loss_and_gradients(ours, reference, embeddings, labels)
    torch.testing.assert_close(ours.proxies.grad, reference.proxies.grad, atol=1e-5, rtol=0)


def test_proxy_anchor_with_a_single_class_present_equals_pytorch_metric_learning():
    embeddings = torch.randn(5, 4, dtype=torch.float64)
    labels = torch.full((5,), 2)
    ours = ProxyAnchorLoss(3, 4).double()
    reference = pml_losses.ProxyAnchorLoss(3, 4, margin=0.1, alpha=32)
    reference.proxies = torch.nn.Parameter(ours.proxies.detach().clone())
    assert ours(embeddings, labels).item() == pytest.approx(
        reference(embeddings, labels).item(), abs=1e-5
    )


def test_proxy_anchor_matches_hand_computed_value():
    loss = ProxyAnchorLoss(2, 2, margin=0.1, alpha=2.0)
    loss.proxies.data.copy_(torch.tensor([[1.0, 0.0], [0.0, 3.0]]))
    # One sample of class 0 at direction (0.6, 0.8): cosines 0.6 (proxy 0) and 0.8 (proxy 1).
    # Only proxy 0 has a positive: log(1 + e^{-2 (0.6 - 0.1)}) over |P+| = 1; negatives:
    # proxy 1 sees the sample, log(1 + e^{2 (0.8 + 0.1)}), proxy 0 none; over |P| = 2.
    expected = math.log(1 + math.exp(-1.0)) + math.log(1 + math.exp(1.8)) / 2
    value = loss(torch.tensor([[3.0, 4.0]]), torch.tensor([0])).item()
    assert value == pytest.approx(expected, rel=1e-6)


def test_proxy_anchor_initialisation_and_classifier_interface():
    torch.manual_seed(0)
    loss = ProxyAnchorLoss(num_classes=400, embedding_dim=64)
    assert isinstance(loss, ProxyClassifierLoss)
    assert ProxyAnchorLoss.normalized_embeddings is True
    # kaiming_normal_(mode="fan_out") on a (C, D) matrix: std sqrt(2 / C).
    assert loss.proxies.std().item() == pytest.approx(math.sqrt(2 / 400), rel=0.05)
    embeddings = torch.randn(3, 64)
    cosines = loss.logits(embeddings)
    unit = embeddings / embeddings.norm(dim=1, keepdim=True)
    proxies = loss.proxies / loss.proxies.norm(dim=1, keepdim=True)
    torch.testing.assert_close(cosines, unit @ proxies.T)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize(("alpha", "beta", "base"), [(2.0, 50.0, 0.5), (1.0, 10.0, 0.2)])
def test_multi_similarity_equals_pytorch_metric_learning(seed, alpha, beta, base):
    # Few classes for many positives; class 5 may appear once (an anchor without positives).
    embeddings, labels = _batch(seed, n=20, dim=6, classes=6)
    ours = MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)
    reference = pml_losses.MultiSimilarityLoss(alpha=alpha, beta=beta, base=base)
    _assert_same_loss_and_gradients(ours, reference, embeddings, labels)


def test_multi_similarity_matches_hand_computed_value():
    # Unit directions (1, 0), (0, 1), (0.6, 0.8) at unequal lengths; classes 0, 0, 1.
    embeddings = torch.tensor([[2.0, 0.0], [0.0, 0.5], [3.0, 4.0]])
    labels = torch.tensor([0, 0, 1])
    loss = MultiSimilarityLoss(alpha=2.0, beta=50.0, base=0.5)

    def term(positives: list[float], negatives: list[float]) -> float:
        pos = math.log(1 + sum(math.exp(-2 * (s - 0.5)) for s in positives)) / 2
        return pos + math.log(1 + sum(math.exp(50 * (s - 0.5)) for s in negatives)) / 50

    # Cosines: s01 = 0, s02 = 0.6, s12 = 0.8.
    expected = (term([0.0], [0.6]) + term([0.0], [0.8]) + term([], [0.6, 0.8])) / 3
    assert loss(embeddings, labels).item() == pytest.approx(expected, rel=1e-6)


def _hyp_pairwise_by_loop(z: torch.Tensor, ipc: int, tau: float, c: float) -> float:
    """The released SupCon loop, one group g and one view pair (a, b) at a time."""
    ball = geoopt.PoincareBall(c=c)
    groups = len(z) // ipc
    views = z.view(groups, ipc, -1)

    def logit(x: torch.Tensor, y: torch.Tensor) -> float:
        return -ball.dist(x, y).item() / tau

    total = 0.0
    for a in range(ipc):
        for b in range(ipc):
            if a == b:
                continue
            pair_loss = 0.0
            for g in range(groups):
                candidates = [logit(views[g, a], views[h, b]) for h in range(groups)]
                candidates += [logit(views[g, a], views[h, a]) for h in range(groups) if h != g]
                log_norm = math.log(sum(math.exp(v) for v in candidates))
                pair_loss += log_norm - candidates[g]
            total += pair_loss / groups
    return total / ipc**2


@pytest.mark.parametrize(("ipc", "groups"), [(2, 5), (3, 4)])
def test_hyp_pairwise_equals_the_released_loop(ipc: int, groups: int):
    generator = torch.Generator().manual_seed(ipc)
    tangent = torch.randn(ipc * groups, 5, dtype=torch.float64, generator=generator)
    z = to_poincare(tangent, curvature=0.1, clip_r=2.3)
    # Classes in scrambled order, each as ipc consecutive samples.
    labels = torch.tensor([7, 3, 9, 0, 4][:groups]).repeat_interleave(ipc)
    value = HypPairwiseLoss(temperature=0.2, curvature=0.1)(z, labels).item()
    # poincare_cdist's float64 Gram-matrix form is accurate to about 1e-8 (geometry.py).
    assert value == pytest.approx(_hyp_pairwise_by_loop(z, ipc, 0.2, 0.1), abs=1e-6)


def test_hyp_pairwise_gradients_match_finite_differences():
    tangent = torch.randn(8, 3, dtype=torch.float64)
    z = to_poincare(tangent, curvature=0.1, clip_r=2.3).detach().requires_grad_()
    labels = torch.arange(4).repeat_interleave(2)
    loss = HypPairwiseLoss()
    assert torch.autograd.gradcheck(lambda x: loss(x, labels), (z,))


@pytest.mark.parametrize(
    "labels",
    [[0, 1, 2, 3], [0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0], [0, 0, 0, 1, 1]],
    ids=["one-per-class", "unequal-groups", "class-in-two-groups", "ragged"],
)
def test_hyp_pairwise_rejects_batches_not_in_the_sampler_layout(labels: list[int]):
    z = torch.zeros(len(labels), 2)
    with pytest.raises(HierpipeError, match="groups of ipc >= 2 consecutive samples"):
        HypPairwiseLoss()(z, torch.tensor(labels))


def test_hyp_pairwise_rejects_points_outside_the_ball():
    z = torch.tensor([[0.0, 0.0], [4.0, 0.0]])
    with pytest.raises(HierpipeError, match="got row 1 with norm"):
        HypPairwiseLoss(curvature=0.1)(z, torch.tensor([0, 0]))
    with pytest.raises(HierpipeError, match="got row 0 with norm"):
        HypPairwiseLoss()(torch.full((2, 2), math.nan), torch.tensor([0, 0]))


def test_build_loss_supplies_sizes_and_head_geometry_only_where_accepted():
    pa = build_loss("proxy_anchor", {"margin": 0.2}, num_classes=5, embedding_dim=8, curvature=0.3)
    assert (pa.num_classes, pa.embedding_dim, pa.margin, pa.alpha) == (5, 8, 0.2, 32.0)
    hyp = build_loss("hyp_pairwise", num_classes=5, embedding_dim=8, curvature=0.3)
    assert (hyp.curvature, hyp.temperature) == (0.3, 0.2)
    ms = build_loss("multi_similarity", {"beta": 40.0}, num_classes=5, embedding_dim=8, clip_r=1.0)
    assert (ms.alpha, ms.beta, ms.base) == (2.0, 40.0, 0.5)


def test_head_geometry_is_not_a_loss_hyperparameter():
    # the head owns the curvature; a loss may not set its own
    with pytest.raises(HierpipeError, match=r"'curvature'.*accepted: temperature"):
        build_loss("hyp_pairwise", {"curvature": 0.3}, num_classes=5, embedding_dim=8)


def test_build_loss_rejects_unknown_hyperparameters_of_proxy_anchor():
    with pytest.raises(HierpipeError, match=r"'beta'.*accepted: margin, alpha"):
        build_loss("proxy_anchor", {"beta": 0.1}, num_classes=5, embedding_dim=8)


@pytest.mark.parametrize(
    ("factory", "match"),
    [
        (lambda: ProxyAnchorLoss(3, 2, alpha=0.0), "alpha: expected a positive finite number"),
        (lambda: ProxyAnchorLoss(3, 2, margin=math.inf), "margin: expected a finite number"),
        (lambda: ProxyAnchorLoss(1, 2), "num_classes: expected an integer >= 2"),
        (lambda: MultiSimilarityLoss(beta=-1.0), "beta: expected a positive finite number"),
        (lambda: MultiSimilarityLoss(base=True), "base: expected a finite number"),
        (lambda: HypPairwiseLoss(temperature=0), "temperature: expected a positive"),
        (lambda: HypPairwiseLoss(curvature=0.0), "curvature: expected a positive"),
    ],
)
def test_constructor_arguments_are_validated(factory, match: str):
    with pytest.raises(HierpipeError, match=match):
        factory()


@pytest.mark.parametrize(
    ("embeddings", "labels", "match"),
    [
        (torch.randn(2, 3, 1), torch.tensor([0, 1]), r"embeddings: expected shape \(N, D\)"),
        (torch.randn(0, 3), torch.tensor([], dtype=torch.long), "with N >= 1"),
        (torch.randn(2, 3), torch.tensor([0, 1, 1]), r"labels: expected shape \(2,\)"),
        (torch.randn(2, 3), torch.tensor([0.0, 1.0]), "labels: expected integer labels"),
    ],
)
@pytest.mark.parametrize("cls", [MultiSimilarityLoss, HypPairwiseLoss])
def test_pair_loss_inputs_are_validated(cls, embeddings, labels, match: str):
    with pytest.raises(HierpipeError, match=match):
        cls()(embeddings, labels)
