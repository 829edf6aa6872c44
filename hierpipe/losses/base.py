"""Common interface of the proxy-based classification losses (docs/methods/README.md)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hierpipe.core.errors import HierpipeError
from hierpipe.core.validation import check_batch, check_int, check_number


class ProxyClassifierLoss(nn.Module, ABC):
    """Cross-entropy over logits computed from embeddings and one learnable proxy per class.

    Subclasses define only `logits`; `proxies` is a (num_classes, embedding_dim) parameter.
    """

    normalized_embeddings: bool
    """Whether the embedding head should L2-normalise its output for this loss."""

    proxies: nn.Parameter

    def __init__(self, num_classes: int, embedding_dim: int) -> None:
        super().__init__()
        self.num_classes = check_int("num_classes", num_classes, 2)
        self.embedding_dim = check_int("embedding_dim", embedding_dim, 1)

    @abstractmethod
    def logits(self, embeddings: Tensor) -> Tensor:
        """Class scores (N, C) for embeddings (N, D); argmax is the prediction."""

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """Mean cross-entropy of `logits(embeddings)` against integer labels (N,)."""
        self._check_inputs(embeddings, labels)
        return F.cross_entropy(self.logits(embeddings), labels)

    def representatives(self) -> Tensor:
        """Class representatives (C, D): the L2-normalised proxies, detached."""
        return F.normalize(self.proxies.detach(), dim=1)

    def _check_inputs(self, embeddings: Tensor, labels: Tensor) -> None:
        if embeddings.dim() != 2 or embeddings.shape[1] != self.embedding_dim:
            raise HierpipeError(
                f"embeddings must have shape (N, {self.embedding_dim}), "
                f"got {tuple(embeddings.shape)}"
            )
        check_batch(embeddings, labels)
        # An out-of-range label on CUDA is a device-side assert that kills the process, so
        # check here at the cost of one synchronisation.
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise HierpipeError(
                f"labels must lie in [0, {self.num_classes - 1}], "
                f"got values in [{int(labels.min())}, {int(labels.max())}]"
            )


class ScaledCosineProxyLoss(ProxyClassifierLoss):
    """Proxy loss on the unit sphere with a fixed scale (NormFace, ProxyDR).

    Proxies start as row-normalised Gaussian vectors and are re-normalised in every
    forward pass. `scale` is a buffer, not a parameter: cross-entropy must never move it,
    but a dynamic-scale scheme may overwrite it in place.
    """

    normalized_embeddings = True

    scale: Tensor

    def __init__(self, num_classes: int, embedding_dim: int, scale: float = 10.0) -> None:
        super().__init__(num_classes, embedding_dim)
        scale = check_number("scale", scale, positive=True)
        self.proxies = nn.Parameter(F.normalize(torch.randn(num_classes, embedding_dim), dim=1))
        self.register_buffer("scale", torch.tensor(float(scale)))

    def cosines(self, embeddings: Tensor) -> Tensor:
        """Cosine similarities (N, C) between the embeddings and the proxies."""
        return F.normalize(embeddings, dim=1) @ F.normalize(self.proxies, dim=1).T

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, embedding_dim={self.embedding_dim}, "
            f"scale={float(self.scale):g}"
        )
