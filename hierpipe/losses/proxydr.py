"""ProxyDR, the distance-ratio formulation, `euc` distance (docs/methods/proxydr.md)."""

from __future__ import annotations

import torch
from torch import Tensor

from hierpipe.losses.base import ScaledCosineProxyLoss

# Keeps the logit finite when an embedding coincides with its proxy (value of the paper's code).
_LOG_EPS = 1e-12


class ProxyDRLoss(ScaledCosineProxyLoss):
    """Logits `-s * log d_c`, so that `p(y|x) = 1 / (1 + sum_{c != y} (d_y / d_c)^s)`.

    d_c is the chord distance between the unit embedding and the unit proxy of class c.
    """

    def logits(self, embeddings: Tensor) -> Tensor:
        """Class scores (N, C) = -scale * log(d^2 + 1e-12) / 2."""
        cosines = self.cosines(embeddings)
        # Under autocast the cosines are half precision, where 1e-12 rounds to zero and a
        # coinciding embedding would give log(0) = -inf.
        cosines = cosines.to(torch.promote_types(cosines.dtype, torch.float32))
        # Rounding can push 2 - 2cos slightly below zero for near-identical vectors.
        squared_distances = (2 - 2 * cosines).clamp(min=0)
        return -self.scale * (squared_distances + _LOG_EPS).log() / 2
