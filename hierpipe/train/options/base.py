"""The interface between the training engine and a training option (docs/methods/README.md).

An option is a named entry in params, never a branch in the training loop: the engine calls
its hooks at fixed points and stores its state in the checkpoint.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from hierpipe.losses.base import ProxyClassifierLoss


@dataclass(frozen=True)
class OptionContext:
    """What an option may use in `setup`.

    `tree_dist` holds the C x C tree distances between the classifier's classes, rows and
    columns in proxy-row order; `lr` is the training learning rate.
    """

    loss: ProxyClassifierLoss
    tree_dist: np.ndarray
    lr: float
    seed: int
    device: torch.device


class TrainingOption(ABC):
    """A training option; every hook but `setup` is an optional no-op by default.

    Hook order per run: `setup` once (before the optimiser is built and before a checkpoint
    is restored), then `on_batch` for every training batch, `log_values` once per epoch.
    """

    freezes_proxies: bool = False
    """The proxies get no gradient: the engine leaves them out of the optimiser."""

    @abstractmethod
    def setup(self, context: OptionContext) -> None:
        """Prepare the option for `context.loss`; subclasses call this first."""
        if self.freezes_proxies:
            context.loss.proxies.requires_grad_(False)

    def on_batch(self, embeddings: Tensor, labels: Tensor) -> None:  # noqa: B027
        """React to one training batch, after its backward pass and before the optimiser step.

        So the option sees the proxies the forward pass used, as the public code computes its
        dynamic-scale statistics; EMA's proxies get no gradient, so the optimiser step does
        not touch them either way. `embeddings` (N, D) are detached float32 values from the
        forward pass, `labels` (N,) the proxy rows of their classes.
        """

    def state_dict(self) -> dict:
        """Everything needed to resume bitwise: tensors and plain Python values only."""
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: B027
        """Restore what `state_dict` returned; called after `setup`."""

    def log_values(self) -> dict[str, float]:
        """Values for the per-epoch training log."""
        return {}
