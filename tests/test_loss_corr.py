"""CORR, the cosine loss of the ProxyDR code (github.com/hjk92g/ProxyDR, train_cifar100.py,
`--CORR`): values against hand computation, DR logits, building by name."""

from __future__ import annotations

import math

import pytest
import torch

from hierpipe.core.errors import HierpipeError
from hierpipe.losses import CORRLoss, build_loss

# Directions (1, 0), (0, 1), (-1, 0) at unequal lengths: only directions may matter.
_PROXIES = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-0.5, 0.0]])
# Unit directions (0.6, 0.8) and (0, -1) at lengths 5 and 2.
_EMBEDDINGS = torch.tensor([[3.0, 4.0], [0.0, -2.0]])
_LABELS = torch.tensor([0, 1])


def _corr(reduction: str | None = None) -> CORRLoss:
    kwargs = {} if reduction is None else {"reduction": reduction}
    loss = CORRLoss(num_classes=3, embedding_dim=2, **kwargs)
    loss.proxies.data.copy_(_PROXIES)
    return loss


# None: the default, which must be the public code's sum over the batch.
@pytest.mark.parametrize(("reduction", "expected"), [(None, 2.4), ("sum", 2.4), ("mean", 1.2)])
def test_corr_matches_hand_computed_value(reduction: str | None, expected: float) -> None:
    # cos((0.6, 0.8), (1, 0)) = 0.6 -> 0.4; cos((0, -1), (0, 1)) = -1 -> 2.
    value = _corr(reduction)(_EMBEDDINGS, _LABELS).item()
    assert value == pytest.approx(expected, rel=1e-6)


def test_corr_built_by_name_takes_its_hyperparameters() -> None:
    loss = build_loss("corr", {"reduction": "mean", "scale": 5.0}, num_classes=3, embedding_dim=2)
    assert isinstance(loss, CORRLoss)
    loss.proxies.data.copy_(_PROXIES)
    assert loss(_EMBEDDINGS, _LABELS).item() == pytest.approx(1.2, rel=1e-6)
    # CORR is scored with the ProxyDR logits -s log d, the only place the scale enters;
    # the squared chord distances of (0.6, 0.8) to the proxies are 0.8, 0.4, 3.2.
    expected = [[-2.5 * math.log(d2 + 1e-12) for d2 in (0.8, 0.4, 3.2)]]
    torch.testing.assert_close(
        loss.logits(_EMBEDDINGS[:1]).double(), torch.tensor(expected, dtype=torch.float64)
    )


def test_corr_rejects_an_unknown_reduction() -> None:
    with pytest.raises(HierpipeError, match=r"reduction must be one of sum, mean, got 'max'"):
        CORRLoss(num_classes=3, embedding_dim=2, reduction="max")


def test_corr_checks_its_inputs() -> None:
    with pytest.raises(HierpipeError, match=r"labels must lie in \[0, 2\]"):
        _corr()(_EMBEDDINGS, torch.tensor([0, 3]))
