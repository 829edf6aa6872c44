"""Top-k classification accuracy."""

from collections.abc import Sequence

import numpy as np
import torch

from hierpipe.errors import HierpipeError
from hierpipe.metrics._validate import as_tensor, check_ks, check_labels


def topk_accuracy(
    scores: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Fraction of samples whose target is among the k highest scores, as ``top{k}`` keys.

    ``scores`` is (N, C), higher is better; ±Inf scores are allowed, NaN is not. A k larger
    than C is clamped to C (every sample then counts as correct); the key keeps the given k.
    """
    s = as_tensor("scores", scores)
    if s.ndim != 2 or s.shape[0] == 0 or s.shape[1] == 0:
        raise HierpipeError(
            f"scores: expected a non-empty (N, C) array, got shape {tuple(s.shape)}"
        )
    if torch.isnan(s).any():
        raise HierpipeError("scores: expected no NaN values")
    num_classes = s.shape[1]
    t = check_labels("target", as_tensor("target", target), len(s)).to(s.device)
    if t.min() < 0 or t.max() >= num_classes:
        raise HierpipeError(
            f"target: expected labels in [0, {num_classes - 1}], "
            f"got range [{int(t.min())}, {int(t.max())}]"
        )
    ks = check_ks(ks)
    depth = min(max(ks), num_classes)
    top = torch.topk(s, depth, dim=1).indices
    hit = top == t[:, None]
    return {f"top{k}": hit[:, : min(k, depth)].any(dim=1).double().mean().item() for k in ks}
