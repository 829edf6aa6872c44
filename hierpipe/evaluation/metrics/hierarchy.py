"""Measures that use the class hierarchy through its tree distance matrix.

Definitions and sources: docs/methods/classification_measures.md (AHC, mistake severity,
AHD@k, HP@k), docs/methods/hierarchy_measures.md (correlations, Robinson-Foulds) and
docs/methods/hierarchical_retrieval_measures.md (HS@k, AHS).

Every function taking ``tree_dist`` checks it the same way: a square, finite, symmetric,
non-negative (C, C) matrix with a zero diagonal.
"""

import math
import numbers
from collections.abc import Sequence

import dendropy
import numpy as np
import torch
from dendropy.calculate import treecompare
from scipy import special
from scipy.cluster.hierarchy import linkage
from scipy.integrate import trapezoid
from scipy.spatial.distance import squareform

from hierpipe.core.errors import HierpipeError
from hierpipe.core.validation import (
    check_finite_array,
    check_int,
    check_ks,
    check_scores,
    class_labels,
    paired_labels,
)

# Keeps artanh finite for a perfectly (anti-)correlated column; tanh maps it back to ~±1.
_R_CLIP = 1.0 - 1e-12
# Tree distances computed in floating point may differ from their transpose by round-off.
_SYMMETRY_RTOL = 1e-9


def _square(name: str, matrix: object, min_classes: int) -> np.ndarray:
    m = check_finite_array(name, "(C, C)", matrix)
    if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] < min_classes:
        raise HierpipeError(
            f"{name}: expected a square (C, C) matrix with C >= {min_classes}, got {m.shape}"
        )
    return m


def check_tree_dist(tree_dist: object, min_classes: int = 1) -> np.ndarray:
    """``tree_dist`` as a float64 (C, C) tree distance matrix, C >= ``min_classes``."""
    tree = _square("tree_dist", tree_dist, min_classes)
    if not np.allclose(tree, tree.T, rtol=_SYMMETRY_RTOL, atol=0.0):
        i, j = np.unravel_index(np.argmax(np.abs(tree - tree.T)), tree.shape)
        raise HierpipeError(
            f"tree_dist: expected a symmetric matrix, got D[{i}, {j}] = {tree[i, j]:g} "
            f"but D[{j}, {i}] = {tree[j, i]:g}"
        )
    nonzero = np.flatnonzero(np.diagonal(tree))
    if len(nonzero):
        i = nonzero[0]
        raise HierpipeError(
            f"tree_dist: expected a zero diagonal, got D[{i}, {i}] = {tree[i, i]:g}"
        )
    if (tree < 0).any():
        i, j = np.argwhere(tree < 0)[0]
        raise HierpipeError(
            f"tree_dist: expected non-negative distances, got D[{i}, {j}] = {tree[i, j]:g}"
        )
    return tree


def _check_pair(rep_dist: object, tree_dist: object) -> tuple[np.ndarray, np.ndarray]:
    # rep_dist is not required to be exactly symmetric: float32 embeddings give round-off.
    rep = _square("rep_dist", rep_dist, min_classes=2)
    tree = check_tree_dist(tree_dist, min_classes=2)
    if rep.shape != tree.shape:
        raise HierpipeError(
            f"rep_dist and tree_dist: expected the same shape, got {rep.shape} and {tree.shape}"
        )
    return rep, tree


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``x``, tied values sharing the mean of their ranks (scipy.stats.rankdata's
    "average")."""
    _, group, sizes = np.unique(x, return_inverse=True, return_counts=True)
    return (np.cumsum(sizes) - (sizes - 1) / 2)[group]


def _spearman(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """Spearman's rho, Pearson's r of the average ranks, and its two-sided p-value from
    Student's t with n - 2 degrees of freedom: scipy.stats.spearmanr's definition, computed
    here because scipy.stats takes 0.4 s to import, a tenth of an evaluation job. A constant
    input has no defined correlation: (NaN, NaN), the documented outcome; so has the p-value
    of two points."""
    x, y = _average_ranks(a), _average_ranks(b)
    x -= x.mean()
    y -= y.mean()
    spread = math.sqrt(float(np.dot(x, x)) * float(np.dot(y, y)))
    if spread == 0:
        return float("nan"), float("nan")
    rho = np.clip(np.dot(x, y) / spread, -1.0, 1.0)
    freedom = len(x) - 2
    with np.errstate(divide="ignore", invalid="ignore"):
        t = rho * np.sqrt(freedom / ((1.0 + rho) * (1.0 - rho)))  # infinite at |rho| = 1
    return float(rho), float(2 * special.stdtr(freedom, -abs(t)))


def classwise_spearman(
    rep_dist: np.ndarray, tree_dist: np.ndarray, include_self: bool = True
) -> tuple[float, float]:
    """Fisher-z mean of the per-class Spearman correlations, and the harmonic mean p-value.

    Class i contributes Spearman(rep_dist[:, i], tree_dist[:, i]); ``include_self`` keeps the
    self-entry (i, i), as the ProxyDR code does (biased upwards: random vectors score above 0). The
    mean is tanh(nanmean(artanh(r_i))) with r_i clipped to ±(1 - 1e-12) so that a perfect
    column stays finite. Undefined correlations (constant columns) are NaN and skipped; NaN
    p-values are left out of the harmonic mean. (NaN, NaN) if every column is undefined.
    """
    rep, tree = _check_pair(rep_dist, tree_dist)
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
    if not len(ps):
        return float(rho), float("nan")
    with np.errstate(divide="ignore"):  # a p-value of 0 makes the harmonic mean 0
        return float(rho), float(1 / np.mean(1 / ps))


def elementwise_spearman(rep_dist: np.ndarray, tree_dist: np.ndarray) -> tuple[float, float]:
    """Spearman correlation (and p-value) over the upper-triangle entries (i < j), 6.2."""
    rep, tree = _check_pair(rep_dist, tree_dist)
    upper = np.triu_indices(rep.shape[0], k=1)
    return _spearman(rep[upper], tree[upper])


# How a tree is built from distances, as scipy's linkage methods: `wpgma` (weighted: a merged
# cluster's distance is the plain mean of its two parts' distances), what ProxyDR's code gets
# from Biopython's DistanceTreeConstructor.upgma, which does not weight by cluster size; and
# true `upgma` (average: weighted by size).
TREE_LINKAGES = {"wpgma": "weighted", "upgma": "average"}


def tree_merges(dist: np.ndarray, linkage_name: str) -> np.ndarray:
    """scipy's merge list of the tree that ``linkage_name`` (TREE_LINKAGES) builds on the
    (C, C) ``dist``; only the upper triangle is read."""
    if linkage_name not in TREE_LINKAGES:
        raise HierpipeError(
            f"linkage: expected one of {', '.join(TREE_LINKAGES)}, got {linkage_name!r}"
        )
    return linkage(squareform(dist, checks=False), method=TREE_LINKAGES[linkage_name])


def _tree_newick(dist: np.ndarray, linkage_name: str) -> str:
    """Newick topology (leaves ``t0``, ``t1``, ...) of the ``linkage_name`` tree of ``dist``."""
    n = len(dist)
    merges = tree_merges(dist, linkage_name)
    # Built bottom-up from the merge list, so a deep (chain-like) tree needs no recursion.
    nodes = [f"t{i}" for i in range(n)]
    for a, b, *_ in merges:
        nodes.append(f"({nodes[int(a)]},{nodes[int(b)]})")
    return nodes[-1] + ";"


def robinson_foulds(
    rep_dist: np.ndarray, tree_dist: np.ndarray, linkage_name: str = "wpgma"
) -> dict[str, int | float]:
    """Robinson-Foulds distance between the trees that ``linkage_name`` (TREE_LINKAGES, by
    default the ProxyDR code's WPGMA) builds on ``rep_dist`` and on ``tree_dist``.

    Returns ``rf`` (int, the symmetric difference of the non-trivial bipartitions of the two
    trees compared as unrooted, as the code's ete3 ``compare(unrooted=True)``), ``max_rf`` =
    2 (C - 3), the largest possible ``rf`` for two unrooted binary trees on C leaves, and
    ``norm_rf`` = rf / max_rf. A dict rather than a single int because the ProxyDR code reports
    all three. With C < 4 every unrooted binary tree is the same: rf = max_rf = 0, norm_rf = NaN.

    Both linkages always build a binary tree; where distances tie (a multifurcation of the
    hierarchy) the resolution is arbitrary. scipy breaks such ties differently from the
    code's Biopython, so rf against a tree with multifurcations can differ from the code's by
    the number of arbitrarily resolved splits.
    """
    rep, tree = _check_pair(rep_dist, tree_dist)
    n = len(rep)
    if n < 4:
        return {"rf": 0, "max_rf": 0, "norm_rf": float("nan")}
    taxa = dendropy.TaxonNamespace()
    rep_tree, hierarchy_tree = (
        dendropy.Tree.get(
            data=_tree_newick(m, linkage_name),
            schema="newick",
            taxon_namespace=taxa,
            rooting="force-unrooted",
        )
        for m in (rep, tree)
    )
    rf = int(treecompare.symmetric_difference(rep_tree, hierarchy_tree))
    max_rf = 2 * (n - 3)
    return {"rf": rf, "max_rf": max_rf, "norm_rf": rf / max_rf}


def _prediction_costs(
    pred: np.ndarray, target: np.ndarray, tree_dist: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Tree distance of each prediction to its target, and which predictions are mistakes."""
    tree = check_tree_dist(tree_dist)
    p, t = paired_labels(pred, target, len(tree))
    return tree[p, t], p != t


def average_hierarchical_cost(pred: np.ndarray, target: np.ndarray, tree_dist: np.ndarray) -> float:
    """Mean tree distance between predicted and true class over all samples (AHC, 6.3).

    Correct predictions count as 0, so AHC = (1 - accuracy) x ``mistake_severity``.
    """
    costs, _ = _prediction_costs(pred, target, tree_dist)
    return float(costs.mean())


def mistake_severity(pred: np.ndarray, target: np.ndarray, tree_dist: np.ndarray) -> float:
    """Mean tree distance between predicted and true class over the mistakes only.

    The mistakes-only average that the code's "HDM" comment names but AHC is not.
    NaN when there are no mistakes.
    """
    costs, mistakes = _prediction_costs(pred, target, tree_dist)
    return float(costs[mistakes].mean()) if mistakes.any() else float("nan")


def _top_classes(
    scores: np.ndarray | torch.Tensor, target: np.ndarray, tree_dist: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Validated tree and target, and the (N, k) highest-scoring classes, best first."""
    tree = check_tree_dist(tree_dist)
    n_classes = len(tree)
    s = check_scores(scores)
    if s.shape[1] != n_classes:
        raise HierpipeError(
            f"scores: expected {n_classes} columns, one per class of tree_dist, got {s.shape[1]}"
        )
    t = class_labels("target", target, n_classes)
    if len(t) != len(s):
        raise HierpipeError(
            f"target: expected {len(s)} labels, one per row of scores, got {len(t)}"
        )
    k = check_int("k", k, 1)
    # Clamping would silently change the measure's meaning, unlike topk_accuracy's top-k.
    if k > n_classes:
        raise HierpipeError(f"k: expected at most {n_classes} (the number of classes), got {k}")
    return tree, t, torch.topk(s, k, dim=1).indices.cpu().numpy()


def ahd_at_k(
    scores: np.ndarray | torch.Tensor, target: np.ndarray, tree_dist: np.ndarray, k: int = 5
) -> float:
    """AHD@k: mean over samples of the mean tree distance of the k top classes to the target.

    (1/N) sum_i (1/k) sum_{r<=k} D(yhat_{i,(r)}, y_i), as the ProxyDR code computes it.
    ``scores`` is (N, C) with C = len(tree_dist), higher is better; k > C is an error.
    """
    tree, t, top = _top_classes(scores, target, tree_dist, k)
    return float(tree[t[:, None], top].mean())


def hp_at_k(
    scores: np.ndarray | torch.Tensor,
    target: np.ndarray,
    tree_dist: np.ndarray,
    k: int = 5,
    definition: str = "code",
) -> float:
    """HP@k: mean fraction of the k top classes within a radius h_i of the target.

    HP@k = (1/N) sum_i |{yhat_{i,(1..k)}} & S_i| / k with S_i = {c : D(y_i, c) <= h_i} and,
    with d_i = sort(D[y_i, :]) (0-based, d_i[0] = 0 is the self-distance):

    - ``"code"`` (default, the public code): h_i = d_i[1 + k], the (k + 2)-th smallest
      distance; on CIFAR-100 with k = 5, S_i is the whole level-1 group. Needs k <= C - 2.
    - ``"devise"`` (DeViSE's "smallest set of nearest classes with >= k labels", whole
      distance shells): h_i = d_i[k - 1], the k-th smallest distance counting the target
      itself; on CIFAR-100 with k = 5, S_i is the 5-class superclass. Needs k <= C.
    """
    offsets = {"code": 1, "devise": -1}
    if definition not in offsets:
        raise HierpipeError(f"definition: expected 'code' or 'devise', got {definition!r}")
    tree, t, top = _top_classes(scores, target, tree_dist, k)
    position = k + offsets[definition]
    if position >= len(tree):
        raise HierpipeError(
            f"k: expected at most {len(tree) - 2} for definition='code', which reads the "
            f"(k + 2)-th smallest of {len(tree)} tree distances, got {k}"
        )
    # The radius depends only on the target class: sort C rows, not N.
    radius = np.sort(tree, axis=1)[:, position]
    within = tree[t[:, None], top] <= radius[t][:, None]
    return float(within.mean())


def _class_similarity(tree: np.ndarray, beta: float) -> np.ndarray:
    """sigma = 1 - T(D)^2 / 2 with T(D) = sqrt(2) D / (beta + D), the code's ``euc`` form."""
    real = isinstance(beta, numbers.Real) and not isinstance(beta, bool)
    if not (real and math.isfinite(beta) and beta > 0):
        raise HierpipeError(f"beta: expected a finite number > 0, got {beta!r}")
    transformed = math.sqrt(2.0) * tree / (beta + tree)
    return 1.0 - transformed**2 / 2.0


def _hs_inputs(
    query_labels: np.ndarray,
    knn_labels: np.ndarray,
    reference_labels: np.ndarray,
    tree_dist: np.ndarray,
    beta: float,
    exclude_self: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validated query and neighbour labels, the per-class pool of ideal neighbours (reference
    class counts, less the query itself if ``exclude_self``) and the class similarities."""
    tree = check_tree_dist(tree_dist)
    n_classes = len(tree)
    q = class_labels("query_labels", query_labels, n_classes)
    knn = class_labels("knn_labels", knn_labels, n_classes, ndim=2)
    if len(knn) != len(q):
        raise HierpipeError(
            f"knn_labels: expected {len(q)} rows, one per query, got shape {knn.shape}"
        )
    ref = class_labels("reference_labels", reference_labels, n_classes)
    counts = np.bincount(ref, minlength=n_classes)
    if exclude_self and (counts[q] == 0).any():
        raise HierpipeError(
            "reference_labels: with exclude_self, expected every query's class among the "
            "references (the query set is its own reference)"
        )
    return q, knn, counts, _class_similarity(tree, beta)


def _hs_curve(
    q: np.ndarray,
    knn: np.ndarray,
    counts: np.ndarray,
    similarity: np.ndarray,
    depth: int,
    exclude_self: bool,
) -> np.ndarray:
    """Mean HS@k over the queries for k = 1..depth."""
    if depth > knn.shape[1]:
        raise HierpipeError(
            f"knn_labels: expected at least {depth} neighbours per query, got {knn.shape[1]}"
        )
    # The ideal ranking depends only on the query's class: one cumulative sum per class.
    ideal = np.empty((len(counts), depth))
    positions = np.arange(depth)
    for c in np.unique(q):
        pool = counts.copy()
        # The code drops the top element of the ideal order: one instance of the own class.
        pool[c] -= int(exclude_self)
        order = np.argsort(-similarity[c], kind="stable")
        # Position r (0-based) of the ideal list lies in the first class whose cumulative
        # count along ``order`` exceeds r.
        shell = np.searchsorted(np.cumsum(pool[order]), positions, side="right")
        ideal[c] = np.cumsum(similarity[c, order[shell]])
    found = np.cumsum(similarity[q[:, None], knn[:, :depth]], axis=1)
    return (found / ideal[q]).mean(axis=0)


def hierarchical_similarity_at_k(
    query_labels: np.ndarray,
    knn_labels: np.ndarray,
    reference_labels: np.ndarray,
    tree_dist: np.ndarray,
    ks: Sequence[int],
    beta: float = 1.0,
    exclude_self: bool = True,
) -> dict[str, float]:
    """HS@k, as ``hs@{k}`` keys: found over ideal summed class similarity of k neighbours.

    sigma(a, b) = 1 - T(D_ab)^2 / 2, T(D) = sqrt(2) D / (beta + D). ``knn_labels`` (Nq, K)
    are the labels of each query's K nearest references, nearest first (self already
    excluded, e.g. via ``nearest_neighbours``). HS@k(q) = sum_{r<=k} sigma(y_q, knn_q(r)) /
    sum_{r<=k} sigma(y_q, best_q(r)), where best_q is ``reference_labels`` sorted by
    similarity to y_q; ``exclude_self`` (the query set is its own reference, as in the code)
    removes one instance of y_q from that ideal pool. HS@k is the mean over queries. Every k
    must be at most K and at most the number of references available per query.
    """
    ks = check_ks(ks)
    q, knn, counts, similarity = _hs_inputs(
        query_labels, knn_labels, reference_labels, tree_dist, beta, exclude_self
    )
    available = int(counts.sum()) - int(exclude_self)
    if max(ks) > available:
        raise HierpipeError(
            f"ks: expected at most {available} (the references available per query), got {max(ks)}"
        )
    curve = _hs_curve(q, knn, counts, similarity, max(ks), exclude_self)
    return {f"hs@{k}": float(curve[k - 1]) for k in ks}


def ahs(
    query_labels: np.ndarray,
    knn_labels: np.ndarray,
    reference_labels: np.ndarray,
    tree_dist: np.ndarray,
    k_max: int = 250,
    beta: float = 1.0,
    exclude_self: bool = True,
) -> float:
    """AHS@k_max: trapezoidal area under HS@1..HS@K with dx = 1 / (K - 1), so in [0, 1].

    K = k_max (250 in the code), or the number of references available per query if that
    is smaller; ``knn_labels`` needs at least K columns and K must be >= 2. Arguments as in
    ``hierarchical_similarity_at_k``.
    """
    k_max = check_int("k_max", k_max, 1)
    q, knn, counts, similarity = _hs_inputs(
        query_labels, knn_labels, reference_labels, tree_dist, beta, exclude_self
    )
    depth = min(k_max, int(counts.sum()) - int(exclude_self))
    if depth < 2:
        raise HierpipeError(
            f"k_max: expected a curve of at least 2 points, got {depth} (k_max = {k_max}, "
            "limited by the references available per query)"
        )
    curve = _hs_curve(q, knn, counts, similarity, depth, exclude_self)
    return float(trapezoid(curve, dx=1.0 / (depth - 1)))
