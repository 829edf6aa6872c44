"""Agreement between class representatives and a class hierarchy (proxydr.md 6.2, 6.3)."""

import warnings

import numpy as np
from scipy import stats

from hierpipe.errors import HierpipeError

# Keeps artanh finite for a perfectly (anti-)correlated column; tanh maps it back to ~±1.
_R_CLIP = 1.0 - 1e-12


def _check_square_pair(rep_dist: np.ndarray, tree_dist: np.ndarray) -> tuple[np.ndarray, ...]:
    rep, tree = np.asarray(rep_dist, dtype=np.float64), np.asarray(tree_dist, dtype=np.float64)
    for name, m in (("rep_dist", rep), ("tree_dist", tree)):
        if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < 2:
            raise HierpipeError(
                f"{name}: expected a square (C, C) matrix with C >= 2, got {m.shape}"
            )
        if not np.isfinite(m).all():
            raise HierpipeError(f"{name}: expected finite values, found NaN or Inf")
    if rep.shape != tree.shape:
        raise HierpipeError(
            f"rep_dist and tree_dist: expected the same shape, got {rep.shape} and {tree.shape}"
        )
    return rep, tree


def _spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    # A constant column has no defined correlation; NaN is the documented outcome.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        result = stats.spearmanr(a, b)
    return float(result.statistic), float(result.pvalue)


def classwise_spearman(
    rep_dist: np.ndarray, tree_dist: np.ndarray, include_self: bool = True
) -> tuple[float, float]:
    """Fisher-z mean of the per-class Spearman correlations, and the harmonic mean p-value.

    Class i contributes Spearman(rep_dist[:, i], tree_dist[:, i]); ``include_self`` keeps the
    self-entry (i, i), as the ProxyDR code does (biased upwards, proxydr.md Q8). The mean is
    tanh(nanmean(artanh(r_i))) with r_i clipped to ±(1 - 1e-12) so that a perfect column
    stays finite. Undefined correlations (constant columns) are NaN and skipped; NaN p-values
    are left out of the harmonic mean. (NaN, NaN) if every column is undefined.
    """
    rep, tree = _check_square_pair(rep_dist, tree_dist)
    n = rep.shape[0]
    rs, ps = np.empty(n), np.empty(n)
    for i in range(n):
        rows = np.arange(n) if include_self else np.delete(np.arange(n), i)
        rs[i], ps[i] = _spearman(rep[rows, i], tree[rows, i])
    defined = ~np.isnan(rs)
    if not defined.any():
        return float("nan"), float("nan")
    rho = np.tanh(np.mean(np.arctanh(np.clip(rs[defined], -_R_CLIP, _R_CLIP))))
    # Two-point columns (C = 3 without the self-entry) have r = ±1 but no p-value.
    ps = ps[~np.isnan(ps)]
    return float(rho), float(stats.hmean(ps)) if len(ps) else float("nan")


def elementwise_spearman(rep_dist: np.ndarray, tree_dist: np.ndarray) -> tuple[float, float]:
    """Spearman correlation (and p-value) over the upper-triangle entries (i < j)."""
    rep, tree = _check_square_pair(rep_dist, tree_dist)
    upper = np.triu_indices(rep.shape[0], k=1)
    return _spearman(rep[upper], tree[upper])


def average_hierarchical_cost(pred: np.ndarray, target: np.ndarray, tree_dist: np.ndarray) -> float:
    """Mean tree distance between predicted and true class over all samples (AHC).

    Correct predictions count as 0, so AHC = (1 - accuracy) x mean mistake distance.
    """
    tree = np.asarray(tree_dist, dtype=np.float64)
    if tree.ndim != 2 or tree.shape[0] != tree.shape[1]:
        raise HierpipeError(f"tree_dist: expected a square (C, C) matrix, got {tree.shape}")
    if not np.isfinite(tree).all():
        raise HierpipeError("tree_dist: expected finite values, found NaN or Inf")
    n_classes = tree.shape[0]
    labels = {}
    for name, x in (("pred", pred), ("target", target)):
        a = np.asarray(x)
        if a.ndim != 1 or len(a) == 0 or not np.issubdtype(a.dtype, np.integer):
            raise HierpipeError(
                f"{name}: expected a non-empty 1-D integer array, got {a.dtype} {a.shape}"
            )
        if a.min() < 0 or a.max() >= n_classes:
            raise HierpipeError(
                f"{name}: expected labels in [0, {n_classes - 1}], got [{a.min()}, {a.max()}]"
            )
        labels[name] = a
    if len(labels["pred"]) != len(labels["target"]):
        raise HierpipeError(
            f"pred and target: expected the same length, got "
            f"{len(labels['pred'])} and {len(labels['target'])}"
        )
    return float(tree[labels["pred"], labels["target"]].mean())
