"""Metric losses, their registry, and the HIER regulariser.

Adding a loss: one new module defining a `ProxyClassifierLoss` subclass (or a pair-based
`nn.Module` with `forward(embeddings, labels)` and `normalized_embeddings`), plus one line in
`LOSSES`. HIER is a regulariser added to a registered loss, so it is exported, not registered.
"""

from __future__ import annotations

import inspect

from torch import nn

from hierpipe.errors import HierpipeError
from hierpipe.losses.base import ProxyClassifierLoss, ScaledCosineProxyLoss
from hierpipe.losses.corr import CORRLoss
from hierpipe.losses.hier import HIERLoss
from hierpipe.losses.hyp_pairwise import HypPairwiseLoss
from hierpipe.losses.multi_similarity import MultiSimilarityLoss
from hierpipe.losses.normface import NormFaceLoss
from hierpipe.losses.proxy_anchor import ProxyAnchorLoss
from hierpipe.losses.proxydr import ProxyDRLoss
from hierpipe.losses.softmax import SoftmaxLoss
from hierpipe.registry import check_hyperparameters

# The losses params may name: those the training engine can train. The pair-based losses
# (MultiSimilarityLoss, HypPairwiseLoss: no proxies, no `logits`) are importable and tested,
# and join the registry once the engine validates by retrieval instead of by classifier.
LOSSES: dict[str, type[nn.Module]] = {
    "softmax": SoftmaxLoss,
    "normface": NormFaceLoss,
    "proxydr": ProxyDRLoss,
    "corr": CORRLoss,
    "proxy_anchor": ProxyAnchorLoss,
}

# The sizes build_loss supplies itself, to the constructors that take them.
_SIZE_ARGUMENTS = ("num_classes", "embedding_dim")


def loss_class(name: str) -> type[nn.Module]:
    """The registered loss class `name`."""
    if name not in LOSSES:
        raise HierpipeError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def build_loss(
    name: str, num_classes: int, embedding_dim: int, **hyperparameters: object
) -> nn.Module:
    """Instantiate the registered loss `name`; `hyperparameters` go to its constructor.

    `num_classes` and `embedding_dim` are passed only to constructors that accept them.
    """
    cls = loss_class(name)
    check_hyperparameters(cls, hyperparameters, f"loss {name!r}", skip=_SIZE_ARGUMENTS)
    accepted = inspect.signature(cls).parameters
    sizes = dict(zip(_SIZE_ARGUMENTS, (num_classes, embedding_dim), strict=True))
    return cls(**{k: v for k, v in sizes.items() if k in accepted}, **hyperparameters)


__all__ = [
    "LOSSES",
    "CORRLoss",
    "HIERLoss",
    "HypPairwiseLoss",
    "MultiSimilarityLoss",
    "NormFaceLoss",
    "ProxyAnchorLoss",
    "ProxyClassifierLoss",
    "ProxyDRLoss",
    "ScaledCosineProxyLoss",
    "SoftmaxLoss",
    "build_loss",
    "loss_class",
]
