"""Proxy-Anchor on cosine similarity, HIER's main metric loss (docs/methods/proxy_anchor.md)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hierpipe.core.validation import check_number
from hierpipe.losses.base import ProxyClassifierLoss


def log1p_sum_exp(values: Tensor, mask: Tensor, dim: int) -> Tensor:
    """`log(1 + sum over mask of exp(values))` along `dim`; 0 where the mask is empty.

    Computed as a log-sum-exp with an appended zero, so that the exponent alpha * (cos + margin)
    of Proxy-Anchor or MS cannot overflow.
    """
    masked = values.masked_fill(~mask, -math.inf)
    zeros = torch.zeros_like(masked.narrow(dim, 0, 1))
    return torch.logsumexp(torch.cat([masked, zeros], dim=dim), dim=dim)


class ProxyAnchorLoss(ProxyClassifierLoss):
    """Proxy-Anchor loss (Kim et al., CVPR 2020) on cosine similarities, as HIER trains it.

    `L = 1/|P+| sum_{p in P+} log(1 + sum_{x of class p} exp(-alpha (cos(x, p) - margin)))
       + 1/|P| sum_{p in P} log(1 + sum_{x not of class p} exp(alpha (cos(x, p) + margin)))`,
    with P+ the proxies whose class is in the batch (HIER's hier/losses.py, `PA`). The proxies
    start from Kaiming-normal (fan_out) as in the public code; the prediction is the nearest
    proxy by cosine, so `logits` are the cosines.
    """

    normalized_embeddings = True

    def __init__(
        self, num_classes: int, embedding_dim: int, margin: float = 0.1, alpha: float = 32.0
    ) -> None:
        super().__init__(num_classes, embedding_dim)
        self.margin = check_number("margin", margin)
        self.alpha = check_number("alpha", alpha, positive=True)
        self.proxies = nn.Parameter(torch.empty(num_classes, embedding_dim))
        nn.init.kaiming_normal_(self.proxies, mode="fan_out")

    def logits(self, embeddings: Tensor) -> Tensor:
        """Cosine similarities (N, C) between the embeddings and the proxies."""
        return F.normalize(embeddings, dim=1) @ F.normalize(self.proxies, dim=1).T

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The Proxy-Anchor loss of the batch (scalar)."""
        self._check_inputs(embeddings, labels)
        cosines = self.logits(embeddings)
        positive = F.one_hot(labels, self.num_classes).bool()
        pos_terms = log1p_sum_exp(-self.alpha * (cosines - self.margin), positive, dim=0)
        neg_terms = log1p_sum_exp(self.alpha * (cosines + self.margin), ~positive, dim=0)
        # Classes absent from the batch contribute 0 to the positive sum and are not counted.
        num_present = positive.any(dim=0).sum().clamp(min=1)
        return pos_terms.sum() / num_present + neg_terms.sum() / self.num_classes

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
            f"margin={self.margin:g}, alpha={self.alpha:g}"
        )
