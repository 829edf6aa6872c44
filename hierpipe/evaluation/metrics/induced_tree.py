"""How well HIER's learned hierarchical proxies reproduce a known class tree.

HIER (Kim, Jeong, Kwak, CVPR 2023) learns M proxies that act as lowest common ancestors
(LCAs): the LCA of points a and b is the proxy p minimising max(d(a, p), d(b, p)), the proxy
that is close to both. Two views of the proxies are judged here against the true tree, with
one point per class (e.g. class means or class proxies) in ``class_points`` (C, D) and the
hierarchical proxies in ``proxies`` (M, D), in the geometry of ``metric`` (and ``curvature``
for ``poincare``), as in ``hierpipe.core.geometry.pairwise_distances``:

- ``lca_distances``: how far apart two classes are as seen through their LCA proxy; its rank
  agreement with the tree distance is a geometry-only measure that works on the sphere too.
- ``induced_tree``: the tree the proxies induce when every node hangs from its nearest
  strictly shallower proxy. It needs a notion of depth, the distance to the origin, so it
  exists for ``poincare`` and ``euclidean`` only: on the sphere every point has the same norm.
- ``induced_tree_measures(class_points, proxies, tree, metric, curvature)``: Spearman
  agreement of both with the tree distance, and the Robinson-Foulds distance between the
  induced and the true tree. It takes the true ``ClassTree`` rather than its distance matrix
  because RF compares tree structures, and a distance matrix only gives the structure back
  through a tree-building method: UPGMA (used by ``robinson_foulds``) reproduces a tree with
  all leaves at the same depth, but not an unbalanced one such as a typical induced tree.
- ``class_tree_robinson_foulds``: that RF distance, computed from the leaf sets of both trees.
"""

from collections import defaultdict

import numpy as np
import torch

from hierpipe.core.errors import HierpipeError
from hierpipe.core.geometry import check_metric, pairwise_distances
from hierpipe.core.hierarchy import ClassTree
from hierpipe.core.validation import check_in_ball, check_points
from hierpipe.evaluation.metrics.hierarchy import classwise_spearman, elementwise_spearman

# Metrics in which the distance to the origin orders points from the root to the leaves.
DEPTH_METRICS = ("poincare", "euclidean")

# Elements of one (rows, C, M) block in ``lca_distances``: 2^22 float64 values are 32 MiB.
_CHUNK_ELEMENTS = 1 << 22

# Name of the node above the top-level nodes when the proxies do not provide a single root.
_ROOT = "root"

_INDUCED_KEYS = (
    "induced_classwise_spearman",
    "induced_elementwise_spearman",
    "induced_rf",
    "induced_norm_rf",
    "induced_internal_nodes",
)


def _inputs(
    class_points: object, proxies: object, metric: str, curvature: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Validated class points and proxies as float64 tensors."""
    check_metric(metric, curvature)
    x = check_points("class_points", "(C, D)", class_points)
    p = check_points("proxies", "(M, D)", proxies)
    if x.shape[1] != p.shape[1]:
        raise HierpipeError(
            f"class_points and proxies: expected the same dimension D, got {x.shape[1]} "
            f"and {p.shape[1]}"
        )
    if metric == "poincare":
        check_in_ball("class_points", x, curvature)
        check_in_ball("proxies", p, curvature)
    return torch.from_numpy(x), torch.from_numpy(p)


def _lca_distances(
    x: torch.Tensor, p: torch.Tensor, metric: str, curvature: float | None
) -> torch.Tensor:
    to_proxy = pairwise_distances(x, p, metric, curvature)
    n, m = to_proxy.shape
    out = torch.empty((n, n), dtype=to_proxy.dtype)
    rows = max(1, _CHUNK_ELEMENTS // (n * m))
    for start in range(0, n, rows):
        block = to_proxy[start : start + rows, None, :]
        out[start : start + rows] = torch.maximum(block, to_proxy[None]).amin(dim=2)
    out.fill_diagonal_(0.0)
    return out


def lca_distances(
    class_points: np.ndarray,
    proxies: np.ndarray,
    metric: str,
    curvature: float | None = None,
) -> np.ndarray:
    """(C, C) distances of class pairs through their LCA proxy; float64.

    Entry (a, b) = min_p max(d(a, p), d(b, p)) for a != b: the radius of the smallest ball
    around a proxy that holds both classes, which is how HIER defines the LCA proxy (the
    argmin). Classes that share a deep ancestor have a proxy close to both and a small
    value; classes that meet only near the root need a far proxy. The diagonal is 0, as in a
    tree distance matrix (min_p d(a, p) would say nothing about the pair structure).

    ``d`` is ``pairwise_distances(., ., metric, curvature)`` in float64. Time is
    O(C^2 M); beyond the (C, M) and (C, C) matrices memory stays at one block of rows of
    about 2^22 elements, so C ~ 11k classes (SOP) fit.
    """
    x, p = _inputs(class_points, proxies, metric, curvature)
    return _lca_distances(x, p, metric, curvature).numpy()


def depths_from_origin(points: torch.Tensor, metric: str, curvature: float | None) -> np.ndarray:
    origin = torch.zeros((1, points.shape[1]), dtype=points.dtype)
    return pairwise_distances(points, origin, metric, curvature)[:, 0].numpy()


def nearest_shallower(dist: np.ndarray, depth: np.ndarray, proxy_depth: np.ndarray) -> np.ndarray:
    """Per row, the nearest proxy strictly shallower than the row's point; -1 if none.

    Equal distances go to the lowest proxy index (argmin keeps the first).
    """
    eligible = proxy_depth[None, :] < depth[:, None]
    masked = np.where(eligible, dist, np.inf)
    nearest = masked.argmin(axis=1)
    return np.where(eligible.any(axis=1), nearest, -1)


def _check_depth_metric(metric: str) -> None:
    if metric not in DEPTH_METRICS:
        raise HierpipeError(
            f"metric: the induced tree needs a depth (distance to the origin), which "
            f"{metric!r} does not give (every point on the sphere has the same norm); "
            f"expected one of {', '.join(DEPTH_METRICS)}"
        )


def _induced_tree(
    x: torch.Tensor, p: torch.Tensor, metric: str, curvature: float | None
) -> tuple[ClassTree, int]:
    proxy_depth = depths_from_origin(p, metric, curvature)
    # a class hangs from its nearest proxy whatever its depth: class points are means,
    # shallower than their samples, and may lie above every proxy
    class_parent = pairwise_distances(x, p, metric, curvature).numpy().argmin(axis=1)
    proxy_parent = nearest_shallower(
        pairwise_distances(p, p, metric, curvature).numpy(), proxy_depth, proxy_depth
    )
    m = len(proxy_depth)
    # Parents are strictly shallower, so deepest-first visits every child before its parent.
    deep_first = np.argsort(-proxy_depth, kind="stable")

    below_proxy = class_parent[class_parent >= 0]
    ancestor = np.zeros(m, dtype=bool)
    ancestor[below_proxy] = True
    for j in deep_first:
        if ancestor[j] and proxy_parent[j] >= 0:
            ancestor[proxy_parent[j]] = True
    # Collapsing a unary node hands its child to its parent, so no child count changes:
    # the proxies that stay are exactly the ancestors with at least two ancestor-or-class
    # children.
    children = np.bincount(below_proxy, minlength=m)
    children += np.bincount(proxy_parent[ancestor & (proxy_parent >= 0)], minlength=m)
    kept = ancestor & (children >= 2)

    # Nearest kept proxy at or above each proxy (-1: the root), shallowest first.
    lifted = np.full(m, -1)
    for j in deep_first[::-1]:
        if kept[j]:
            lifted[j] = j
        elif proxy_parent[j] >= 0:
            lifted[j] = lifted[proxy_parent[j]]

    def up(parent: int) -> str:
        return _ROOT if parent < 0 or lifted[parent] < 0 else f"p{lifted[parent]}"

    classes = [f"c{i}" for i in range(len(x))]
    parents: dict[str, str | None] = {_ROOT: None}
    parents.update((name, up(j)) for name, j in zip(classes, class_parent, strict=True))
    parents.update((f"p{j}", up(proxy_parent[j])) for j in np.flatnonzero(kept))
    top = [node for node, parent in parents.items() if parent == _ROOT]
    # A single kept proxy below the root is the LCA of all classes: it is the root itself,
    # and keeping the extra root above it would leave a unary node.
    if len(top) == 1 and top[0].startswith("p"):
        del parents[_ROOT]
        parents[top[0]] = None
    return ClassTree.from_parents(parents, classes), int(kept.sum())


def induced_tree(
    class_points: np.ndarray,
    proxies: np.ndarray,
    metric: str,
    curvature: float | None = None,
) -> tuple[ClassTree, int]:
    """The tree the proxies induce over the classes, and the number of proxies it keeps.

    Depth = distance to the origin in the geometry (``poincare``: Poincaré distance to the
    zero vector, increasing with the norm; ``euclidean``: the norm), because HIER places
    general (ancestor) proxies nearer the origin than their descendants. Each class hangs
    from its nearest proxy (by ``metric``), and each proxy from its nearest proxy among
    those strictly shallower than itself, or from the root if there is none. Equal depths
    never make a parent (so the links cannot form a cycle); equal distances go to the lowest
    proxy index. Classes are not held to the depth rule: a class point is typically a mean
    of its samples, shallower than they are, and may lie above every proxy.

    Proxies that are no class's ancestor are dropped, and every proxy with a single child is
    collapsed (its child hangs from its parent), so no internal node is unary; if a single
    proxy is left below the root, that proxy is the root. Nodes are named ``c<i>`` (class
    row i, in input order) and ``p<j>`` (proxy row j); the root above several top nodes is
    ``root``. The count is the kept proxies, internal nodes of the returned tree, including
    a proxy that became the root.

    Only ``poincare`` and ``euclidean`` have a depth; the sphere metrics (``cosine``,
    ``chord``, ``squared_chord``) raise ``HierpipeError``.
    """
    x, p = _inputs(class_points, proxies, metric, curvature)
    _check_depth_metric(metric)
    return _induced_tree(x, p, metric, curvature)


def _splits(tree: ClassTree) -> set[frozenset[int]]:
    """Non-trivial bipartitions of the leaves, each as the side without class 0."""
    below: defaultdict[tuple[str, ...], set[int]] = defaultdict(set)
    for leaf, path in enumerate(tree.paths):
        for k in range(1, len(path)):
            below[path[:k]].add(leaf)
    n = tree.num_classes
    everyone = frozenset(range(n))
    # Unrooted, a clade and its complement are the same split; naming it by the side without
    # class 0 makes the two rooted views of it (e.g. the root's two children) coincide.
    sides = (frozenset(clade) if 0 not in clade else everyone - clade for clade in below.values())
    return {side for side in sides if 2 <= len(side) <= n - 2}


def class_tree_robinson_foulds(a: ClassTree, b: ClassTree) -> dict[str, int | float]:
    """Robinson-Foulds distance between two trees over the same class ids, compared unrooted.

    Classes are matched by id (position), not by name. Every internal node splits the
    leaves into its clade and the rest; ``rf`` is the number of such bipartitions with at
    least two leaves on each side that are in one tree but not the other, as in
    ``robinson_foulds`` (ete3's ``compare(unrooted=True)``). It is read from the trees'
    structure, so unbalanced trees and multifurcations (fewer splits) are compared exactly.
    ``max_rf`` = the number of splits of both trees, the largest ``rf`` they could have, and
    ``norm_rf`` = rf / max_rf (NaN when neither tree has a split), as ete3 normalises. For
    two binary trees max_rf = 2 (C - 3), as in ``robinson_foulds``; for multifurcating trees
    it is smaller, so a tree that resolves nothing (a star: no split) scores norm_rf = 1
    against any resolved tree rather than looking half right.
    """
    for name, tree in (("a", a), ("b", b)):
        if not isinstance(tree, ClassTree):
            raise HierpipeError(f"{name}: expected a ClassTree, got {type(tree).__name__}")
    if a.num_classes != b.num_classes:
        raise HierpipeError(
            f"a and b: expected trees over the same classes, got {a.num_classes} and "
            f"{b.num_classes} classes"
        )
    splits_a, splits_b = _splits(a), _splits(b)
    rf = len(splits_a ^ splits_b)
    max_rf = len(splits_a) + len(splits_b)
    return {"rf": rf, "max_rf": max_rf, "norm_rf": rf / max_rf if max_rf else float("nan")}


def induced_tree_measures(
    class_points: np.ndarray,
    proxies: np.ndarray,
    tree: ClassTree,
    metric: str,
    curvature: float | None = None,
) -> dict[str, float]:
    """Agreement of the proxies' LCA distances and induced tree with the true ``tree``.

    Row i of ``class_points`` is class id i of ``tree``; T = ``tree.distance_matrix()``.

    - ``lca_classwise_spearman`` / ``_noself``: ``classwise_spearman(lca_distances, T)``
      with ``include_self`` True / False; ``lca_elementwise_spearman``: over pairs i < j.
    - ``induced_classwise_spearman`` (include_self True, like the lca one) and
      ``induced_elementwise_spearman``: the same for the induced tree's distance matrix.
    - ``induced_rf`` / ``induced_norm_rf``: ``class_tree_robinson_foulds(induced, tree)``.
    - ``induced_internal_nodes``: proxies kept by ``induced_tree``; ``num_classes``: C.

    The ``induced_*`` values are NaN for the sphere metrics, which have no depth. All values
    are floats (Spearman rho only, no p-values). With fewer than 3 classes there is nothing
    to rank and the result is ``{}``.
    """
    if not isinstance(tree, ClassTree):
        raise HierpipeError(f"tree: expected a ClassTree, got {type(tree).__name__}")
    x, p = _inputs(class_points, proxies, metric, curvature)
    n = len(x)
    if n != tree.num_classes:
        raise HierpipeError(
            f"class_points: expected {tree.num_classes} rows, one per class of tree, got {n}"
        )
    if n < 3:
        return {}
    tree_dist = tree.distance_matrix()
    lca = _lca_distances(x, p, metric, curvature).numpy()
    measures = {
        "lca_classwise_spearman": classwise_spearman(lca, tree_dist, include_self=True)[0],
        "lca_classwise_spearman_noself": classwise_spearman(lca, tree_dist, include_self=False)[0],
        "lca_elementwise_spearman": elementwise_spearman(lca, tree_dist)[0],
    }
    if metric in DEPTH_METRICS:
        induced, internal = _induced_tree(x, p, metric, curvature)
        induced_dist = induced.distance_matrix()
        rf = class_tree_robinson_foulds(induced, tree)
        measures.update(
            induced_classwise_spearman=classwise_spearman(induced_dist, tree_dist)[0],
            induced_elementwise_spearman=elementwise_spearman(induced_dist, tree_dist)[0],
            induced_rf=float(rf["rf"]),
            induced_norm_rf=float(rf["norm_rf"]),
            induced_internal_nodes=float(internal),
        )
    else:
        measures.update(dict.fromkeys(_INDUCED_KEYS, float("nan")))
    measures["num_classes"] = float(n)
    return measures
