"""CORR: cosine loss against fixed class embeddings (docs/methods/corr.md)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from hierpipe.core.errors import HierpipeError
from hierpipe.losses.proxydr import ProxyDRLoss

REDUCTIONS = ("sum", "mean")


class CORRLoss(ProxyDRLoss):
    """Training loss `sum_i (1 - cos(z_i, w_{y_i}))`; scored with the ProxyDR logits.

    The class embeddings must be fixed by the MDS option (`needs_fixed_proxies` in
    hierpipe.core.catalog).
    `reduction="sum"` is the public code's choice; "mean" divides by the batch size
    (docs/methods/corr.md). `scale` only enters the logits, which prediction ignores.
    """

    def __init__(
        self,
        num_classes: int,
        embedding_dim: int,
        scale: float = 10.0,
        reduction: str = "sum",
    ) -> None:
        super().__init__(num_classes, embedding_dim, scale)
        if reduction not in REDUCTIONS:
            raise HierpipeError(
                f"reduction must be one of {', '.join(REDUCTIONS)}, got {reduction!r}"
            )
        self.reduction = reduction

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Sum (or mean) over the batch of one minus the cosine to the own class embedding."""
        self._check_inputs(embeddings, labels)
        own = F.normalize(self.proxies[labels], dim=1)
        losses = 1 - (F.normalize(embeddings, dim=1) * own).sum(dim=1)
        return losses.sum() if self.reduction == "sum" else losses.mean()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, reduction={self.reduction}"
