"""Metric losses, their registry, and the HIER regulariser.

Adding a loss: one new module defining a `ProxyClassifierLoss` subclass (or a pair-based
`nn.Module` with `forward(embeddings, labels)` and `normalized_embeddings`), plus its entry in
`hierpipe.core.catalog.LOSSES`. A regulariser (HIER) is an `nn.Module` with the same `forward`,
registered in `hierpipe.core.catalog.REGULARIZERS`; a run adds it to its loss with a weight
(`Objective`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

from torch import nn

from hierpipe.core import catalog
from hierpipe.core.catalog import SUPPLIED_ARGUMENTS
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

# The classes behind the names of hierpipe.core.catalog, which declares each one's metadata.
LOSSES: dict[str, type[nn.Module]] = {name: entry.load() for name, entry in catalog.LOSSES.items()}
REGULARIZERS: dict[str, type[nn.Module]] = {
    name: entry.load() for name, entry in catalog.REGULARIZERS.items()
}


def loss_class(name: str) -> type[nn.Module]:
    """The registered loss class `name`."""
    catalog.lookup(catalog.LOSSES, name, "loss")
    return LOSSES[name]


def build_loss(
    name: str, hyperparameters: Mapping[str, object] | None = None, **supplied: object
) -> nn.Module:
    """Instantiate the registered loss `name` with `hyperparameters` (from params).

    `supplied` holds what the caller knows itself (SUPPLIED_ARGUMENTS: sizes, head geometry);
    each goes only to constructors that accept it, and params can never set it.
    """
    entry = catalog.lookup(catalog.LOSSES, name, "loss")
    return _instantiate(entry, f"loss {name!r}", hyperparameters, supplied)


def build_regularizer(
    name: str, hyperparameters: Mapping[str, object] | None = None, **supplied: object
) -> nn.Module:
    """Instantiate the registered regulariser `name`, like `build_loss`."""
    entry = catalog.lookup(catalog.REGULARIZERS, name, "regularizer")
    return _instantiate(entry, f"regularizer {name!r}", hyperparameters, supplied)


def _instantiate(
    entry: catalog.Component,
    what: str,
    hyperparameters: Mapping[str, object] | None,
    supplied: Mapping[str, object],
) -> nn.Module:
    unexpected = sorted(set(supplied) - set(SUPPLIED_ARGUMENTS))
    if unexpected:
        raise TypeError(f"cannot supply {unexpected} to {what}; only {SUPPLIED_ARGUMENTS}")
    catalog.check_hyperparameters(entry, hyperparameters, what)
    cls = entry.load()
    accepted = inspect.signature(cls).parameters
    return cls(**{k: v for k, v in supplied.items() if k in accepted}, **(hyperparameters or {}))


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
    "loss_class",
]
