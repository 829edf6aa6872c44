"""Training options: the classes behind the names of `hierpipe.core.catalog.TRAINING_OPTIONS`.

Adding an option: one module defining a `TrainingOption` subclass, plus its entry in the
catalog, which declares its hyperparameters, the losses it trains and whether it fixes the
proxies. Options run their hooks in catalog order.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hierpipe.core import catalog
from hierpipe.train.options.base import OptionContext, TrainingOption
from hierpipe.train.options.dynamic_scale import DynamicScale
from hierpipe.train.options.ema import EMAProxies
from hierpipe.train.options.mds import MDSProxies


def build_options(spec: Mapping[str, Mapping[str, Any] | None], loss: str) -> list[TrainingOption]:
    """Instantiate the options named in `spec` (name -> hyperparameters) for training `loss`,
    in catalog order, after checking that they can train it."""
    catalog.check_option_set(spec, loss)
    return [
        entry.load()(**(spec[name] or {}))
        for name, entry in catalog.TRAINING_OPTIONS.items()
        if name in spec
    ]


__all__ = [
    "DynamicScale",
    "EMAProxies",
    "MDSProxies",
    "OptionContext",
    "TrainingOption",
    "build_options",
]
