"""Proxy-based classification losses and their registry.

Adding a loss: one new module defining a `ProxyClassifierLoss` subclass, plus one line in
`LOSSES`.
"""

from __future__ import annotations

from hierpipe.errors import HierpipeError
from hierpipe.losses.base import ProxyClassifierLoss, ScaledCosineProxyLoss
from hierpipe.losses.corr import CORRLoss
from hierpipe.losses.normface import NormFaceLoss
from hierpipe.losses.proxydr import ProxyDRLoss
from hierpipe.losses.softmax import SoftmaxLoss
from hierpipe.registry import check_hyperparameters

LOSSES: dict[str, type[ProxyClassifierLoss]] = {
    "softmax": SoftmaxLoss,
    "normface": NormFaceLoss,
    "proxydr": ProxyDRLoss,
    "corr": CORRLoss,
}


def loss_class(name: str) -> type[ProxyClassifierLoss]:
    """The registered loss class `name`."""
    if name not in LOSSES:
        raise HierpipeError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def build_loss(
    name: str, num_classes: int, embedding_dim: int, **hyperparameters: object
) -> ProxyClassifierLoss:
    """Instantiate the registered loss `name`; `hyperparameters` go to its constructor."""
    cls = loss_class(name)
    check_hyperparameters(
        cls, hyperparameters, f"loss {name!r}", skip=("num_classes", "embedding_dim")
    )
    return cls(num_classes, embedding_dim, **hyperparameters)


__all__ = [
    "LOSSES",
    "CORRLoss",
    "NormFaceLoss",
    "ProxyClassifierLoss",
    "ProxyDRLoss",
    "ScaledCosineProxyLoss",
    "SoftmaxLoss",
    "build_loss",
    "loss_class",
]
