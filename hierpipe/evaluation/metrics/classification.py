"""Standard classification measures: top-k and level-wise accuracy, calibration.

Definitions and sources: docs/methods/classification_measures.md.
"""

from collections.abc import Sequence

import numpy as np
import torch

from hierpipe.core.errors import HierpipeError
from hierpipe.core.validation import (
    as_tensor,
    check_int,
    check_ks,
    check_label_range,
    check_labels,
    check_scores,
    class_labels,
    paired_labels,
)


def topk_accuracy(
    scores: np.ndarray | torch.Tensor,
    target: np.ndarray | torch.Tensor,
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Fraction of samples whose target is among the k highest scores, as ``top{k}`` keys.

    ``scores`` is (N, C), higher is better; ±Inf scores are allowed, NaN is not. A target
    outside [0, C) is an error (the scores matrix does not cover every class). A k larger
    than C is clamped to C (every sample then counts as correct); the key keeps the given k.
    """
    s = check_scores(scores)
    num_classes = s.shape[1]
    t = check_labels("target", as_tensor("target", target), len(s)).to(s.device)
    check_label_range(
        "target",
        t,
        num_classes,
        hint=" (a scores matrix whose width differs from the number of classes?)",
    )
    ks = check_ks(ks)
    depth = min(max(ks), num_classes)
    top = torch.topk(s, depth, dim=1).indices
    hit = top == t[:, None]
    return {f"top{k}": hit[:, : min(k, depth)].any(dim=1).double().mean().item() for k in ks}


# How confidences fall into bins: `public_code`, ProxyDR's code, [b/n, (b+1)/n), so that a
# confidence of exactly 1 is in no bin but still counts in N; `upper_closed`, the common
# _ECELoss code, (b/n, (b+1)/n] (a confidence of exactly 0 joins the first bin).
CALIBRATION_BINS = ("public_code", "upper_closed")


def calibration_errors(
    probabilities: np.ndarray, target: np.ndarray, n_bins: int = 15, bins: str = "public_code"
) -> dict[str, float]:
    """Expected and maximum calibration error, ``ece`` and ``mce``.

    Confidence is the maximum probability of each row and the prediction its arg-max.
    Confidences fall into ``n_bins`` equal-width bins, their edges as ``bins`` says
    (CALIBRATION_BINS). ECE = sum_b |B_b|/N |acc_b - conf_b| over all N rows; MCE = the
    largest |acc_b - conf_b| over non-empty bins. ``probabilities`` is (N, C) with values in
    [0, 1]; rows need not sum to 1.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim != 2 or p.shape[0] == 0 or p.shape[1] == 0:
        raise HierpipeError(f"probabilities: expected a non-empty (N, C) array, got {p.shape}")
    if not (np.isfinite(p).all() and (p >= 0).all() and (p <= 1).all()):
        raise HierpipeError("probabilities: expected finite values in [0, 1]")
    t = class_labels("target", target, p.shape[1])
    if len(t) != len(p):
        raise HierpipeError(f"target: expected {len(p)} labels, one per row, got {len(t)}")
    n_bins = check_int("n_bins", n_bins, 1)
    if bins not in CALIBRATION_BINS:
        raise HierpipeError(f"bins: expected one of {', '.join(CALIBRATION_BINS)}, got {bins!r}")

    confidence = p.max(axis=1)
    correct = p.argmax(axis=1) == t
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    if bins == "upper_closed":
        # side="left" puts a confidence equal to an upper edge into that edge's bin
        index = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
        binned = np.ones(len(p), dtype=bool)
    else:
        # side="right" puts it into the next bin: past the last one for a confidence of 1
        index = np.searchsorted(edges, confidence, side="right") - 1
        binned = index < n_bins
    index, confidence, correct = index[binned], confidence[binned], correct[binned]
    size = np.bincount(index, minlength=n_bins)
    used = size > 0
    if not used.any():
        return {"ece": 0.0, "mce": float("nan")}
    gap = (
        np.abs(
            np.bincount(index, weights=correct, minlength=n_bins)[used]
            - np.bincount(index, weights=confidence, minlength=n_bins)[used]
        )
        / size[used]
    )
    return {"ece": float((size[used] * gap).sum() / len(p)), "mce": float(gap.max())}


def level_accuracy(pred: np.ndarray, target: np.ndarray, level_labels: np.ndarray) -> float:
    """Accuracy after mapping prediction and target to their level-l ancestor.

    ``level_labels[c]`` is the ancestor id of class c, e.g. ``ClassTree.level_labels(level)``.
    """
    level = class_labels("level_labels", level_labels, None)
    p, t = paired_labels(pred, target, len(level))
    return float(np.mean(level[p] == level[t]))
