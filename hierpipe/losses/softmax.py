"""Softmax classifier (docs/methods/softmax.md)."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from hierpipe.losses.base import ProxyClassifierLoss


class SoftmaxLoss(ProxyClassifierLoss):
    """Linear classifier `f @ W.T + b` on the un-normalised embedding f, trained with CE.

    The rows of W are the proxies; W starts as plain `randn` (not normalised), b as zeros.
    """

    normalized_embeddings = False

    def __init__(self, num_classes: int, embedding_dim: int) -> None:
        super().__init__(num_classes, embedding_dim)
        self.proxies = nn.Parameter(torch.randn(num_classes, embedding_dim))
        self.bias = nn.Parameter(torch.zeros(num_classes))

    def logits(self, embeddings: Tensor) -> Tensor:
        """Affine class scores (N, C)."""
        return embeddings @ self.proxies.T + self.bias

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}"
