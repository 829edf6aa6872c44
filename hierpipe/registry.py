"""Shared checks for the name -> class registries (losses, training options)."""

from __future__ import annotations

import inspect
from collections.abc import Collection, Mapping

from hierpipe.errors import HierpipeError


def check_hyperparameters(
    cls: type, hyperparameters: Mapping[str, object], what: str, skip: Collection[str] = ()
) -> None:
    """Raise naming every key of `hyperparameters` that `cls`'s constructor does not accept.

    `what` names the component in the message (e.g. "loss 'normface'"); `skip` lists
    constructor parameters that the caller supplies itself and params must not set.
    """
    accepted = [p for p in inspect.signature(cls).parameters if p not in skip]
    unknown = sorted(set(hyperparameters) - set(accepted))
    if unknown:
        raise HierpipeError(
            f"unknown hyperparameter(s) {', '.join(map(repr, unknown))} for {what}; "
            f"accepted: {', '.join(accepted) or 'none'}"
        )
