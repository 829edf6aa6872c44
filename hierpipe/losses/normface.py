"""NormFace, the ProxyDR code's `euc` form (docs/methods/normface.md)."""

from __future__ import annotations

from torch import Tensor

from hierpipe.losses.base import ScaledCosineProxyLoss


class NormFaceLoss(ScaledCosineProxyLoss):
    """Scaled-cosine softmax: logits `s * cos(z, w_c)`.

    Equal to a softmax over `-(s/2) * d_c^2` with the squared chord distance d_c^2.
    """

    def logits(self, embeddings: Tensor) -> Tensor:
        """Class scores (N, C) = scale * cosine."""
        return self.scale * self.cosines(embeddings)
