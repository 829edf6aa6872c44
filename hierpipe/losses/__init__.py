"""Metric losses, their registry, and the HIER regulariser.

Adding a loss: one new module defining a `ProxyClassifierLoss` subclass (or a pair-based
`nn.Module` with `forward(embeddings, labels)` and `normalized_embeddings`), plus one line in
`LOSSES`. A regulariser (HIER) is an `nn.Module` with the same `forward`, registered in
`REGULARIZERS`; a run adds it to its loss with a weight (`Objective`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from torch import nn

from hierpipe.errors import HierpipeError
from hierpipe.losses.base import ProxyClassifierLoss, ScaledCosineProxyLoss
from hierpipe.losses.corr import CORRLoss
from hierpipe.losses.hier import HIERLoss
from hierpipe.losses.hyp_pairwise import HypPairwiseLoss
from hierpipe.losses.multi_similarity import MultiSimilarityLoss
from hierpipe.losses.normface import NormFaceLoss
from hierpipe.losses.objective import Objective
from hierpipe.losses.proxy_anchor import ProxyAnchorLoss
from hierpipe.losses.proxydr import ProxyDRLoss
from hierpipe.losses.softmax import SoftmaxLoss
from hierpipe.registry import check_hyperparameters

# The losses params may name. Proxy-based losses classify (their `logits` validate a run);
# pair-based ones (multi_similarity, hyp_pairwise) are validated by retrieval.
LOSSES: dict[str, type[nn.Module]] = {
    "softmax": SoftmaxLoss,
    "normface": NormFaceLoss,
    "proxydr": ProxyDRLoss,
    "corr": CORRLoss,
    "proxy_anchor": ProxyAnchorLoss,
    "multi_similarity": MultiSimilarityLoss,
    "hyp_pairwise": HypPairwiseLoss,
}

# Terms added to any loss with a weight (hier.md 6.7); HIERsph and the Euclidean variant are
# HIER with `geometry: sphere | euclidean`.
REGULARIZERS: dict[str, type[nn.Module]] = {
    "hier": HIERLoss,
}

# What the caller supplies itself, to the constructors that take it: the sizes, and the
# geometry of the embedding head (one curvature for the head and everything measuring in it).
SUPPLIED_ARGUMENTS = ("num_classes", "embedding_dim", "curvature", "clip_r")


def loss_class(name: str) -> type[nn.Module]:
    """The registered loss class `name`."""
    if name not in LOSSES:
        raise HierpipeError(f"unknown loss {name!r}; known losses: {', '.join(sorted(LOSSES))}")
    return LOSSES[name]


def required_head(cls: type[nn.Module]) -> str | None:
    """The embedding head a loss cannot do without (Hyp's pairwise loss needs the ball)."""
    return getattr(cls, "required_head", None)


def default_head(cls: type[nn.Module]) -> str:
    """The head a loss trains with unless params choose one (proxydr.md 3.1)."""
    return required_head(cls) or ("sphere" if cls.normalized_embeddings else "euclidean")


def build_loss(
    name: str, hyperparameters: Mapping[str, object] | None = None, **supplied: object
) -> nn.Module:
    """Instantiate the registered loss `name` with `hyperparameters` (from params).

    `supplied` holds what the caller knows itself (SUPPLIED_ARGUMENTS: sizes, head geometry);
    each goes only to constructors that accept it, and params can never set it.
    """
    return _instantiate(loss_class(name), f"loss {name!r}", hyperparameters, supplied)


def build_regularizer(
    name: str, hyperparameters: Mapping[str, object] | None = None, **supplied: object
) -> nn.Module:
    """Instantiate the registered regulariser `name`, like `build_loss`."""
    if name not in REGULARIZERS:
        raise HierpipeError(
            f"unknown regularizer {name!r}; known regularizers: {', '.join(sorted(REGULARIZERS))}"
        )
    return _instantiate(REGULARIZERS[name], f"regularizer {name!r}", hyperparameters, supplied)


def _instantiate(
    cls: type[nn.Module],
    what: str,
    hyperparameters: Mapping[str, object] | None,
    supplied: Mapping[str, object],
) -> nn.Module:
    unexpected = sorted(set(supplied) - set(SUPPLIED_ARGUMENTS))
    if unexpected:
        raise TypeError(f"cannot supply {unexpected} to {what}; only {SUPPLIED_ARGUMENTS}")
    hyperparameters = dict(hyperparameters or {})
    check_hyperparameters(cls, hyperparameters, what, skip=SUPPLIED_ARGUMENTS)
    accepted = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in supplied.items() if k in accepted}, **hyperparameters)


__all__ = [
    "LOSSES",
    "REGULARIZERS",
    "SUPPLIED_ARGUMENTS",
    "CORRLoss",
    "HIERLoss",
    "HypPairwiseLoss",
    "MultiSimilarityLoss",
    "NormFaceLoss",
    "Objective",
    "ProxyAnchorLoss",
    "ProxyClassifierLoss",
    "ProxyDRLoss",
    "ScaledCosineProxyLoss",
    "SoftmaxLoss",
    "build_loss",
    "build_regularizer",
    "default_head",
    "loss_class",
    "required_head",
]
