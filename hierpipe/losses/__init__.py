"""Proxy-based classification losses and their registry.

Adding a loss: one new module defining a `ProxyClassifierLoss` subclass, plus one line in
`LOSSES`.
"""

from __future__ import annotations

import inspect

from hierpipe.errors import HierpipeError
from hierpipe.losses.base import ProxyClassifierLoss, ScaledCosineProxyLoss
from hierpipe.losses.normface import NormFaceLoss
from hierpipe.losses.proxydr import ProxyDRLoss
from hierpipe.losses.softmax import SoftmaxLoss

LOSSES: dict[str, type[ProxyClassifierLoss]] = {
    "softmax": SoftmaxLoss,
    "normface": NormFaceLoss,
    "proxydr": ProxyDRLoss,
}


def build_loss(
    name: str, num_classes: int, embedding_dim: int, **hyperparameters: object
) -> ProxyClassifierLoss:
    """Instantiate the registered loss `name`; `hyperparameters` go to its constructor."""
    if name not in LOSSES:
        raise HierpipeError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    cls = LOSSES[name]
    accepted = [
        p for p in inspect.signature(cls).parameters if p not in ("num_classes", "embedding_dim")
    ]
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise HierpipeError(
            f"unknown hyperparameter(s) {', '.join(map(repr, unknown))} for loss {name!r}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
    return cls(num_classes, embedding_dim, **hyperparameters)


__all__ = [
    "LOSSES",
    "NormFaceLoss",
    "ProxyClassifierLoss",
    "ProxyDRLoss",
    "ScaledCosineProxyLoss",
    "SoftmaxLoss",
    "build_loss",
]
