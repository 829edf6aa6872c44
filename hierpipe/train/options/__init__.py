"""Training options and their registry (proxydr.md section 4).

Adding an option: one module defining a `TrainingOption` subclass, plus one line in
`TRAINING_OPTIONS`. Options run their hooks in registry order: dynamic scale reads the
proxies before EMA moves them, as the public code computes its statistics from the forward
pass.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hierpipe.errors import HierpipeError
from hierpipe.losses import ProxyClassifierLoss, loss_class
from hierpipe.registry import check_hyperparameters
from hierpipe.train.options.base import OptionContext, TrainingOption
from hierpipe.train.options.dynamic_scale import DynamicScale
from hierpipe.train.options.ema import EMAProxies
from hierpipe.train.options.mds import MDSProxies

TRAINING_OPTIONS: dict[str, type[TrainingOption]] = {
    "dynamic_scale": DynamicScale,
    "ema": EMAProxies,
    "mds": MDSProxies,
}

# Option sets that params may not combine, with the reason given to the user.
_EXCLUSIVE: list[tuple[frozenset[str], str]] = [
    (
        frozenset({"ema", "mds"}),
        "EMA would move the class embeddings that MDS fixes; the public code silently "
        "ignores EMA under MDS (proxydr.md 4.2, 4.4), so drop 'ema'",
    ),
]


def _check_names(spec: Mapping[str, Mapping[str, Any]]) -> None:
    if not isinstance(spec, Mapping):
        raise HierpipeError(
            f"training options must be a mapping of name -> hyperparameters, got {spec!r}"
        )
    unknown = sorted(set(spec) - set(TRAINING_OPTIONS))
    if unknown:
        raise HierpipeError(
            f"unknown training option(s) {', '.join(map(repr, unknown))}; "
            f"known options: {', '.join(sorted(TRAINING_OPTIONS))}"
        )


def build_options(spec: Mapping[str, Mapping[str, Any]]) -> list[TrainingOption]:
    """Instantiate the options named in `spec` (name -> hyperparameters), in registry order."""
    _check_names(spec)
    for names, reason in _EXCLUSIVE:
        if names <= set(spec):
            raise HierpipeError(
                f"training options {' and '.join(sorted(names))} cannot be combined: {reason}"
            )
    options = []
    for name, cls in TRAINING_OPTIONS.items():
        if name not in spec:
            continue
        hyperparameters = spec[name] or {}
        if not isinstance(hyperparameters, Mapping):
            raise HierpipeError(
                f"hyperparameters of training option {name!r} must be a mapping, "
                f"got {hyperparameters!r}"
            )
        check_hyperparameters(cls, hyperparameters, f"training option {name!r}")
        options.append(cls(**hyperparameters))
    return options


def check_option_set(spec: Mapping[str, Mapping[str, Any]], loss_name: str) -> None:
    """Raise HierpipeError unless `spec` is a valid option set for loss `loss_name`.

    Checks names, hyperparameters (by building the options), combinations, each option
    against the loss, and that a loss needing fixed class embeddings (CORR) gets them.
    """
    cls = loss_class(loss_name)
    options = build_options(spec)
    if not issubclass(cls, ProxyClassifierLoss):
        if options:
            raise HierpipeError(
                f"training options act on class proxies; loss {loss_name!r} "
                f"({cls.__name__}) is pair-based and has none"
            )
        return
    for option in options:
        type(option).check_compatible(loss_name, cls)
    if cls.requires_fixed_proxies and not any(o.fixes_proxies for o in options):
        fixing = sorted(name for name, option in TRAINING_OPTIONS.items() if option.fixes_proxies)
        raise HierpipeError(
            f"loss {loss_name!r} trains against fixed class embeddings (proxydr.md 3.5); "
            f"add the training option {' or '.join(map(repr, fixing))}"
        )


def proxies_from_hierarchy(spec: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether the option set fits the proxies to the true class tree (MDS; section 10, Q17)."""
    _check_names(spec)
    return any(TRAINING_OPTIONS[name].proxies_from_hierarchy for name in spec)


__all__ = [
    "TRAINING_OPTIONS",
    "DynamicScale",
    "EMAProxies",
    "MDSProxies",
    "OptionContext",
    "TrainingOption",
    "build_options",
    "check_option_set",
    "proxies_from_hierarchy",
]
