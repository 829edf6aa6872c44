"""Loss values against hand-computed numbers and pytorch-metric-learning, gradients, scale
handling, and building losses by name."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pytorch_metric_learning.losses import NormalizedSoftmaxLoss
from torch.func import functional_call

from hierpipe.core.errors import HierpipeError
from hierpipe.losses import (
    LOSSES,
    NormFaceLoss,
    ProxyClassifierLoss,
    ProxyDRLoss,
    SoftmaxLoss,
    build_loss,
)

# The registered losses with one proxy per class (the pair-based ones are tested in
# test_losses_metric.py).
PROXY_LOSSES = sorted(n for n, cls in LOSSES.items() if issubclass(cls, ProxyClassifierLoss))


def _cross_entropy(logits: list[float], label: int) -> float:
    return -logits[label] + math.log(sum(math.exp(v) for v in logits))


# Proxies of unequal length whose directions are (1, 0), (0, 1), (-1, 0): the losses on
# the sphere must see only the directions.
_SPHERE_PROXIES = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-0.5, 0.0]])
# Unit directions (0.6, 0.8) and (0, -1), given at lengths 5 and 2.
_SPHERE_EMBEDDINGS = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
_SPHERE_LABELS = torch.tensor([0, 1])


def test_softmax_matches_hand_computed_value() -> None:
    loss = SoftmaxLoss(num_classes=3, embedding_dim=2)
    loss.proxies.data.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, -1.0]]))
    loss.bias.data.copy_(torch.tensor([0.5, 0.0, -0.5]))
    embeddings = torch.tensor([[2.0, 1.0], [0.0, -1.0]])
    # f = (2, 1): logits (2 + 0.5, 1, -3 - 0.5); f = (0, -1): logits (0.5, -1, 1 - 0.5).
    expected = (_cross_entropy([2.5, 1.0, -3.5], 0) + _cross_entropy([0.5, -1.0, 0.5], 2)) / 2
    assert loss(embeddings, torch.tensor([0, 2])).item() == pytest.approx(expected, rel=1e-6)


def test_softmax_uses_unnormalised_embeddings() -> None:
    loss = SoftmaxLoss(num_classes=2, embedding_dim=2)
    loss.proxies.data.copy_(torch.eye(2))
    assert loss.logits(torch.tensor([[3.0, 4.0]])).tolist() == [[3.0, 4.0]]


@pytest.mark.parametrize("scale", [10.0, 3.0])
def test_normface_matches_hand_computed_value(scale: float) -> None:
    loss = NormFaceLoss(num_classes=3, embedding_dim=2, scale=scale)
    loss.proxies.data.copy_(_SPHERE_PROXIES)
    # z = (0.6, 0.8): cosines (0.6, 0.8, -0.6); z = (0, -1): cosines (0, -1, 0).
    expected = (
        _cross_entropy([0.6 * scale, 0.8 * scale, -0.6 * scale], 0)
        + _cross_entropy([0.0, -scale, 0.0], 1)
    ) / 2
    value = loss(_SPHERE_EMBEDDINGS, _SPHERE_LABELS).item()
    assert value == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("scale", [1.0, 10.0, 32.0])
def test_normface_equals_pytorch_metric_learnings_normalized_softmax(scale: float) -> None:
    # pytorch-metric-learning's NormalizedSoftmaxLoss.get_logits divides the cosine (its
    # default DotProductSimilarity normalises embeddings and the columns of W) by
    # `temperature`, so scale s is temperature 1/s; W is stored (D, C), the proxies' transpose.
    generator = torch.Generator().manual_seed(int(scale))
    embeddings = 3 * torch.randn(12, 5, dtype=torch.float64, generator=generator)
    weights = torch.randn(7, 5, dtype=torch.float64, generator=generator)
    labels = torch.randint(0, 7, (12,), generator=generator)

    ours = NormFaceLoss(num_classes=7, embedding_dim=5, scale=scale).double()
    peer = NormalizedSoftmaxLoss(num_classes=7, embedding_size=5, temperature=1 / scale).double()
    with torch.no_grad():
        ours.proxies.copy_(weights)
        peer.W.copy_(weights.T)
    ours_z = embeddings.clone().requires_grad_()
    peer_z = embeddings.clone().requires_grad_()
    value, expected = ours(ours_z, labels), peer(peer_z, labels)
    value.backward()
    expected.backward()

    assert value.item() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(ours_z.grad, peer_z.grad, rtol=1e-10, atol=1e-14)
    torch.testing.assert_close(ours.proxies.grad, peer.W.grad.T, rtol=1e-10, atol=1e-14)


def test_proxydr_matches_distance_ratio_form() -> None:
    loss = ProxyDRLoss(num_classes=3, embedding_dim=2, scale=10.0)
    loss.proxies.data.copy_(_SPHERE_PROXIES)
    # Squared chord distances 2 - 2cos: (0.8, 0.4, 3.2) and (2, 4, 2).
    # Sample 1, y = 0: ratios d0/d1 = sqrt(2), d0/d2 = 1/2, so 1 + 2^5 + 2^-10.
    # Sample 2, y = 1: ratios d1/d0 = d1/d2 = sqrt(2), so 1 + 2^5 + 2^5.
    expected = (math.log(1 + 32 + 1 / 1024) + math.log(65)) / 2
    value = loss(_SPHERE_EMBEDDINGS, _SPHERE_LABELS).item()
    assert value == pytest.approx(expected, rel=1e-6)


def test_proxydr_general_scale_matches_distance_ratio_form() -> None:
    scale = 4.5
    loss = ProxyDRLoss(num_classes=3, embedding_dim=2, scale=scale)
    loss.proxies.data.copy_(_SPHERE_PROXIES)
    distances = [math.sqrt(0.8), math.sqrt(0.4), math.sqrt(3.2)]
    expected = math.log(1 + sum((distances[0] / distances[c]) ** scale for c in (1, 2)))
    value = loss(_SPHERE_EMBEDDINGS[:1], _SPHERE_LABELS[:1]).item()
    assert value == pytest.approx(expected, rel=1e-6)


def test_proxydr_is_finite_when_embedding_coincides_with_its_proxy() -> None:
    loss = ProxyDRLoss(num_classes=3, embedding_dim=2)
    loss.proxies.data.copy_(_SPHERE_PROXIES)
    value = loss(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))
    assert torch.isfinite(value)
    assert value.item() == pytest.approx(0.0, abs=1e-4)


@pytest.mark.parametrize("name", PROXY_LOSSES)
def test_gradients_match_finite_differences(name: str) -> None:
    torch.manual_seed(0)
    loss = build_loss(name, num_classes=3, embedding_dim=4).double()
    embeddings = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    proxies = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    labels = torch.tensor([0, 1, 2, 1, 0])

    assert torch.autograd.gradcheck(lambda z: loss(z, labels), (embeddings,))
    assert torch.autograd.gradcheck(
        lambda w: functional_call(loss, {"proxies": w}, (embeddings.detach(), labels)),
        (proxies,),
    )


@pytest.mark.parametrize("cls", [NormFaceLoss, ProxyDRLoss])
def test_scale_is_a_buffer_that_training_never_moves(cls: type[ProxyClassifierLoss]) -> None:
    loss = cls(num_classes=4, embedding_dim=3, scale=7.0)
    assert "scale" not in dict(loss.named_parameters())
    assert "scale" in loss.state_dict()

    optimizer = torch.optim.SGD(loss.parameters(), lr=1.0)
    loss(torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])).backward()
    optimizer.step()
    assert loss.scale.item() == 7.0


@pytest.mark.parametrize("cls", [NormFaceLoss, ProxyDRLoss])
def test_scale_can_be_changed_in_place(cls: type[ProxyClassifierLoss]) -> None:
    loss = cls(num_classes=3, embedding_dim=2, scale=2.0)
    embeddings = torch.tensor([[3.0, 4.0]])
    before = loss.logits(embeddings)
    loss.scale.fill_(6.0)
    torch.testing.assert_close(loss.logits(embeddings), 3 * before)


@pytest.mark.parametrize("name", PROXY_LOSSES)
def test_representatives_are_the_detached_normalised_proxies(name: str) -> None:
    loss = build_loss(name, num_classes=5, embedding_dim=7)
    with torch.no_grad():  # rows of unequal length: only their directions may survive
        loss.proxies.mul_(torch.arange(1.0, 6.0)[:, None])
    reps = loss.representatives()
    assert not reps.requires_grad
    proxies = loss.proxies.detach().double().numpy()
    expected = proxies / np.linalg.norm(proxies, axis=1, keepdims=True)
    np.testing.assert_allclose(reps.double().numpy(), expected, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", PROXY_LOSSES)
def test_normalized_embeddings_flag_says_whether_the_loss_ignores_the_length(name: str) -> None:
    # The flag tells the head to L2-normalise for the loss: it must be set exactly for the
    # losses whose value depends on the embeddings' directions only.
    torch.manual_seed(0)
    loss = build_loss(name, num_classes=4, embedding_dim=3)
    embeddings, labels = torch.randn(6, 3), torch.tensor([0, 1, 2, 3, 0, 1])
    rescaled = embeddings * torch.tensor([0.2, 1.0, 3.0, 7.0, 0.5, 2.0])[:, None]
    same = torch.allclose(loss(rescaled, labels), loss(embeddings, labels), rtol=1e-5, atol=0)
    assert same is loss.normalized_embeddings


def test_build_loss_passes_hyperparameters() -> None:
    loss = build_loss("proxydr", {"scale": 3.0}, num_classes=3, embedding_dim=2)
    loss.proxies.data.copy_(_SPHERE_PROXIES)
    # chord distances of (0.6, 0.8) to the proxies: sqrt(0.8), sqrt(0.4), sqrt(3.2)
    expected = math.log(1 + math.sqrt(2) ** 3 + 0.5**3)
    value = loss(_SPHERE_EMBEDDINGS[:1], _SPHERE_LABELS[:1]).item()
    assert value == pytest.approx(expected, rel=1e-6)


def test_build_loss_unknown_name_lists_known_names() -> None:
    with pytest.raises(HierpipeError, match=r"'arcface'.*normface, proxy_anchor, proxydr, softmax"):
        build_loss("arcface", num_classes=3, embedding_dim=2)


def test_build_loss_unknown_hyperparameter_names_it_and_lists_accepted() -> None:
    with pytest.raises(HierpipeError, match=r"'margin'.*accepted: scale"):
        build_loss("normface", {"margin": 0.1}, num_classes=3, embedding_dim=2)
    with pytest.raises(HierpipeError, match=r"'scale'.*accepted: none"):
        build_loss("softmax", {"scale": 10.0}, num_classes=3, embedding_dim=2)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_classes": 1, "embedding_dim": 2}, "num_classes: expected an integer >= 2"),
        ({"num_classes": 3.0, "embedding_dim": 2}, "num_classes: expected an integer >= 2"),
        ({"num_classes": 3, "embedding_dim": 0}, "embedding_dim: expected an integer >= 1"),
        ({"num_classes": 3, "embedding_dim": 2, "scale": 0.0}, "scale: expected a positive"),
        ({"num_classes": 3, "embedding_dim": 2, "scale": float("nan")}, "scale: expected"),
    ],
)
def test_constructor_arguments_are_validated(kwargs: dict, match: str) -> None:
    with pytest.raises(HierpipeError, match=match):
        ProxyDRLoss(**kwargs)


@pytest.mark.parametrize(
    ("embeddings", "labels", "match"),
    [
        (torch.randn(2, 3), torch.tensor([0, 1]), r"embeddings must have shape \(N, 2\)"),
        (torch.randn(2, 2), torch.tensor([0, 1, 2]), r"labels: expected shape \(2,\)"),
        (torch.randn(2, 2), torch.tensor([0.0, 1.0]), "labels: expected integer labels"),
        (torch.randn(2, 2), torch.tensor([0, 3]), r"labels must lie in \[0, 2\]"),
        (torch.randn(2, 2), torch.tensor([-1, 0]), r"labels must lie in \[0, 2\]"),
    ],
)
@pytest.mark.parametrize("name", PROXY_LOSSES)
def test_forward_inputs_are_validated(
    name: str, embeddings: torch.Tensor, labels: torch.Tensor, match: str
) -> None:
    loss = build_loss(name, num_classes=3, embedding_dim=2)
    with pytest.raises(HierpipeError, match=match):
        loss(embeddings, labels)
