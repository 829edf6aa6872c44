"""Loss values against hand-computed numbers, gradients, scale handling and the registry."""

from __future__ import annotations

import math

import pytest
import torch
from torch.func import functional_call

from hierpipe.core.errors import HierpipeError
from hierpipe.losses import (
    LOSSES,
    REGULARIZERS,
    CORRLoss,
    HIERLoss,
    HypPairwiseLoss,
    MultiSimilarityLoss,
    NormFaceLoss,
    ProxyAnchorLoss,
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
def test_representatives_are_detached_unit_rows(name: str) -> None:
    loss = build_loss(name, num_classes=5, embedding_dim=7)
    reps = loss.representatives()
    assert reps.shape == (5, 7)
    assert not reps.requires_grad
    torch.testing.assert_close(reps.norm(dim=1), torch.ones(5))


def test_normalized_embeddings_flags() -> None:
    assert SoftmaxLoss.normalized_embeddings is False
    assert NormFaceLoss.normalized_embeddings is True
    assert ProxyDRLoss.normalized_embeddings is True


def test_registry_holds_the_losses() -> None:
    expected = {
        "softmax": SoftmaxLoss,
        "normface": NormFaceLoss,
        "proxydr": ProxyDRLoss,
        "corr": CORRLoss,
        "proxy_anchor": ProxyAnchorLoss,
        "multi_similarity": MultiSimilarityLoss,
        "hyp_pairwise": HypPairwiseLoss,
    }
    assert expected == LOSSES
    assert {"hier": HIERLoss} == REGULARIZERS


def test_build_loss_passes_hyperparameters() -> None:
    loss = build_loss("proxydr", {"scale": 3.0}, num_classes=5, embedding_dim=8)
    assert isinstance(loss, ProxyDRLoss)
    assert (loss.num_classes, loss.embedding_dim, loss.scale.item()) == (5, 8, 3.0)


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
