"""CORR (proxydr.md 3.5): value against hand computation, gradients, DR logits, registry."""

from __future__ import annotations

import pytest
import torch

from hierpipe.core.errors import HierpipeError
from hierpipe.losses import CORRLoss, ProxyDRLoss, build_loss

# Directions (1, 0), (0, 1), (-1, 0) at unequal lengths: only directions may matter.
_PROXIES = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-0.5, 0.0]])
# Unit directions (0.6, 0.8) and (0, -1) at lengths 5 and 2.
_EMBEDDINGS = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
_LABELS = torch.tensor([0, 1])


def _corr(reduction: str = "sum") -> CORRLoss:
    loss = CORRLoss(num_classes=3, embedding_dim=2, reduction=reduction)
    loss.proxies.data.copy_(_PROXIES)
    return loss


@pytest.mark.parametrize(("reduction", "expected"), [("sum", 2.4), ("mean", 1.2)])
def test_corr_matches_hand_computed_value(reduction: str, expected: float) -> None:
    # cos((0.6, 0.8), (1, 0)) = 0.6 -> 0.4; cos((0, -1), (0, 1)) = -1 -> 2.
    value = _corr(reduction)(_EMBEDDINGS, _LABELS).item()
    assert value == pytest.approx(expected, rel=1e-6)


def test_corr_default_is_the_public_codes_sum() -> None:
    assert CORRLoss(num_classes=3, embedding_dim=2).reduction == "sum"


def test_corr_is_scored_with_the_proxydr_logits() -> None:
    corr = _corr()
    proxydr = ProxyDRLoss(num_classes=3, embedding_dim=2)
    proxydr.proxies.data.copy_(_PROXIES)
    torch.testing.assert_close(corr.logits(_EMBEDDINGS), proxydr.logits(_EMBEDDINGS))


def test_corr_is_registered_with_its_hyperparameters() -> None:
    loss = build_loss("corr", {"reduction": "mean", "scale": 5.0}, num_classes=4, embedding_dim=3)
    assert isinstance(loss, CORRLoss)
    assert (loss.reduction, loss.scale.item()) == ("mean", 5.0)


def test_corr_rejects_an_unknown_reduction() -> None:
    with pytest.raises(HierpipeError, match=r"reduction must be one of sum, mean, got 'max'"):
        CORRLoss(num_classes=3, embedding_dim=2, reduction="max")


def test_corr_checks_its_inputs() -> None:
    with pytest.raises(HierpipeError, match=r"labels must lie in \[0, 2\]"):
        _corr()(_EMBEDDINGS, torch.tensor([0, 3]))
