"""The Hyp baseline's pairwise cross-entropy on the Poincaré ball (docs/methods/hyp_pairwise.md)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hierpipe.core.errors import HierpipeError
from hierpipe.core.geometry import poincare_cdist
from hierpipe.core.validation import check_batch, check_in_ball, check_number


def _views(labels: Tensor) -> int:
    # The Hyp sampler lays a batch out as groups of `ipc` consecutive samples of one class,
    # each class once; the loss pairs the a-th and b-th samples of every group.
    changes = (labels[1:] != labels[:-1]).nonzero()
    ipc = int(changes[0, 0]) + 1 if len(changes) else len(labels)
    valid = ipc >= 2 and len(labels) % ipc == 0
    if valid:
        groups = labels.reshape(-1, ipc)
        valid = bool((groups == groups[:, :1]).all()) and len(groups[:, 0].unique()) == len(groups)
    if not valid:
        raise HierpipeError(
            "labels must come in groups of ipc >= 2 consecutive samples of one class, each "
            f"class in one group only (the Hyp sampler's layout); the {len(labels)} labels "
            f"start {labels[:8].tolist()}"
        )
    return ipc


class HypPairwiseLoss(nn.Module):
    """Pairwise cross-entropy of Hyp (Ermolov et al., CVPR 2022) as HIER's `SupCon` runs it.

    The batch is G groups of `ipc` samples of one class (x_g^1 ... x_g^ipc). For every ordered
    pair of views a != b and every group g, a softmax cross-entropy picks x_g^b among
    {x_h^b : all h} and {x_h^a : h != g}, with logits `-d_c(x_g^a, .) / temperature`; the
    ipc (ipc - 1) losses (each a mean over groups) are summed and divided by ipc^2, as the
    released HIER code does (hyp_metric itself sums without dividing: a constant factor).
    Embeddings are points in the Poincaré ball of curvature `curvature` (the head maps them
    there); they are not L2-normalised.
    """

    normalized_embeddings = False

    def __init__(self, temperature: float = 0.2, curvature: float = 0.1) -> None:
        super().__init__()
        self.temperature = check_number("temperature", temperature, positive=True)
        self.curvature = check_number("curvature", curvature, positive=True)

    def forward(self, embeddings: Tensor, labels: Tensor) -> Tensor:
        """The loss of a batch laid out as groups of consecutive same-class samples (scalar)."""
        check_batch(embeddings, labels)
        check_in_ball("embeddings", embeddings, self.curvature)
        ipc = _views(labels)
        groups = len(labels) // ipc
        logits = -poincare_cdist(embeddings, embeddings, self.curvature) / self.temperature
        # by_view[a, b, g, h] = logit between view a of group g and view b of group h.
        by_view = logits.reshape(groups, ipc, groups, ipc).permute(1, 3, 0, 2)
        same_view = torch.diagonal(by_view).permute(2, 0, 1)
        # A sample is never its own negative.
        same_view = same_view.masked_fill(
            torch.eye(groups, dtype=torch.bool, device=logits.device), -torch.inf
        )
        candidates = torch.cat([by_view, same_view[:, None].expand_as(by_view)], dim=3)
        targets = torch.arange(groups, device=logits.device).expand(ipc, ipc, groups)
        per_pair = F.cross_entropy(candidates.permute(0, 3, 1, 2), targets, reduction="none")
        off_diagonal = ~torch.eye(ipc, dtype=torch.bool, device=logits.device)
        return per_pair.mean(dim=2)[off_diagonal].sum() / ipc**2

    def extra_repr(self) -> str:
        return f"temperature={self.temperature:g}, curvature={self.curvature:g}"
