"""Multi-Similarity loss on cosine similarity, HIER's second metric loss.

Definition and source: docs/methods/multi_similarity.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hierpipe.core.validation import check_batch, check_number
from hierpipe.losses.proxy_anchor import log1p_sum_exp


class MultiSimilarityLoss(nn.Module):
    """Multi-Similarity loss (Wang et al., CVPR 2019) over all pairs of the batch.

    `L = 1/N sum_i [ 1/alpha log(1 + sum_{k in P_i} exp(-alpha (S_ik - base)))
                   + 1/beta  log(1 + sum_{k in N_i} exp( beta (S_ik - base))) ]`
    with S the cosine similarity, P_i the other samples of i's class and N_i the samples of
    other classes. HIER's public code (hier/losses.py) uses no hard-pair miner, so neither does
    this. No proxies: it is not a classifier.
    """

    normalized_embeddings = True

    def __init__(self, alpha: float = 2.0, beta: float = 50.0, base: float = 0.5) -> None:
        super().__init__()
        self.alpha = check_number("alpha", alpha, positive=True)
        self.beta = check_number("beta", beta, positive=True)
        self.base = check_number("base", base)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The MS loss of the batch (scalar), averaged over all N anchors."""
        check_batch(embeddings, labels)
        unit = F.normalize(embeddings, dim=1)
        similarities = unit @ unit.T
        same = labels[:, None] == labels[None, :]
        positive = same & ~torch.eye(len(labels), dtype=torch.bool, device=labels.device)
        pos_terms = log1p_sum_exp(-self.alpha * (similarities - self.base), positive, dim=1)
        neg_terms = log1p_sum_exp(self.beta * (similarities - self.base), ~same, dim=1)
        return (pos_terms / self.alpha + neg_terms / self.beta).mean()

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, beta={self.beta:g}, base={self.base:g}"
