"""EMA proxies: class centres tracked by an exponential moving average (docs/methods/ema.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from hierpipe.core.validation import check_number
from hierpipe.train.options.base import (
    OptionContext,
    TrainingOption,
)


class EMAProxies(TrainingOption):
    """Proxies get no gradient; after each step, w_c <- normalize(a m_c + (1 - a) w_c).

    m_c is the normalised mean of the batch's normalised class-c embeddings. The first
    batch that contains class c sets w_c = m_c: the public code takes the normalised mean
    there too when c occurs several times (train_cifar100.py, `update_proxy`).
    """

    freezes_proxies = True

    def __init__(self, alpha: float = 0.01) -> None:
        check_number("ema alpha", alpha, positive=True, maximum=1.0)
        self.alpha = float(alpha)

    def setup(self, context: OptionContext) -> None:
        """Freeze the proxies and mark every class as not yet seen."""
        super().setup(context)
        self._proxies = context.loss.proxies
        self._seen = torch.zeros(context.loss.num_classes, dtype=torch.bool, device=context.device)

    @torch.no_grad()
    def on_batch(self, embeddings: Tensor, labels: Tensor) -> None:
        """Move the proxy of every class in the batch towards its batch mean direction."""
        classes, rows = torch.unique(labels, return_inverse=True)
        # A membership matmul rather than index_add_, whose CUDA atomics are not bitwise
        # reproducible; normalising the sum gives the normalised mean without the counts.
        members = rows[None, :] == torch.arange(len(classes), device=rows.device)[:, None]
        means = F.normalize(members.to(embeddings.dtype) @ F.normalize(embeddings, dim=1), dim=1)
        moved = F.normalize(
            self.alpha * means + (1 - self.alpha) * self._proxies[classes].to(means.dtype), dim=1
        )
        first = ~self._seen[classes]
        self._proxies[classes] = torch.where(first[:, None], means, moved).to(self._proxies.dtype)
        self._seen[classes] = True

    def state_dict(self) -> dict:
        return {"seen": self._seen.clone()}

    def load_state_dict(self, state: dict) -> None:
        self._seen.copy_(state["seen"])
