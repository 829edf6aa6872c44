import itertools
import math

import dendropy
import numpy as np
import pytest
from dendropy.calculate import treecompare
from scipy import stats

from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree
from hierpipe.evaluation.metrics import induced_tree as module
from hierpipe.evaluation.metrics import robinson_foulds
from hierpipe.evaluation.metrics.induced_tree import (
    class_tree_robinson_foulds,
    induced_tree,
    induced_tree_measures,
    lca_distances,
)

CURVATURE = 0.1


def _polar(radius: float, angle: float) -> list[float]:
    return [radius * math.cos(angle), radius * math.sin(angle)]


def _distance(a: np.ndarray, b: np.ndarray, metric: str) -> float:
    """Reference distances, written independently of hierpipe.core.geometry."""
    if metric == "euclidean":
        return float(np.linalg.norm(a - b))
    if metric == "cosine":
        return float(1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    # The arccosh form of the Poincaré distance, not the asinh form the package uses.
    gap = (1 - CURVATURE * a @ a) * (1 - CURVATURE * b @ b)
    return float(np.arccosh(1 + 2 * CURVATURE * np.sum((a - b) ** 2) / gap) / CURVATURE**0.5)


def _in_ball(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    directions = rng.normal(size=(n, dim))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions * rng.uniform(0, 0.95 / CURVATURE**0.5, size=(n, 1))


def _brute_force_lca(points: np.ndarray, proxies: np.ndarray, metric: str) -> np.ndarray:
    """min over proxies of the larger distance to the two points, off the diagonal."""
    n = len(points)
    lca = np.zeros((n, n))
    for a, b in itertools.permutations(range(n), 2):
        lca[a, b] = min(
            max(_distance(points[a], p, metric), _distance(points[b], p, metric)) for p in proxies
        )
    return lca


@pytest.mark.parametrize("metric", ["euclidean", "poincare", "cosine"])
def test_lca_distances_match_a_brute_force_triple_loop(metric):
    rng = np.random.default_rng(0)
    points, proxies = _in_ball(rng, 7, 3), _in_ball(rng, 5, 3)
    expected = _brute_force_lca(points, proxies, metric)
    curvature = CURVATURE if metric == "poincare" else None
    got = lca_distances(points, proxies, metric, curvature)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected, rtol=1e-10, atol=1e-12)


def test_lca_distances_by_hand():
    # d(a, p) = d(a, q) = d(b, p) = 1, d(b, q) = sqrt 5, d(c, p) = sqrt 10, d(c, q) = 2.
    points = np.array([[0.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    proxies = np.array([[1.0, 0.0], [0.0, 1.0]])
    expected = [[0, 1, 2], [1, 0, math.sqrt(5)], [2, math.sqrt(5), 0]]
    np.testing.assert_allclose(lca_distances(points, proxies, "euclidean"), expected)


@pytest.mark.parametrize("elements", [1, 40])
def test_lca_distances_do_not_depend_on_the_chunk_size(monkeypatch, elements):
    rng = np.random.default_rng(1)
    points, proxies = rng.normal(size=(9, 4)), rng.normal(size=(6, 4))
    whole = lca_distances(points, proxies, "euclidean")
    monkeypatch.setattr(module, "_CHUNK_ELEMENTS", elements)
    np.testing.assert_array_equal(lca_distances(points, proxies, "euclidean"), whole)


# A root-level proxy p0, mid-depth proxies p1 (right) and p2 (left), and decoys: p3 lies
# deeper than every class, p4 and p5 are unary (one class each) at the same depth, p6 is
# nobody's nearest, and p7 sits on class 2 at its exact depth, so it cannot be its parent.
HAND_PROXIES = np.array(
    [[0, 0], [1, 0], [-1, 0], [0, 5], [3.5, 1.5], [3.5, -1.5], [0, 2], [-4, 1]], dtype=float
)
HAND_CLASSES = np.array([[4, 1], [4, -1], [-4, 1], [-4, -1]], dtype=float)


def test_induced_tree_by_hand():
    tree, internal = induced_tree(HAND_CLASSES, HAND_PROXIES, "euclidean")
    # c0 -> p4 -> p1 and c1 -> p5 -> p1 collapse to c0, c1 -> p1. c2 sits on p7 and c3 is
    # nearest to it too (2 against 3.16 to p2), whatever the depths: classes take their
    # nearest proxy. p7 -> p2 (its nearest shallower proxy) -> p0; p2 has one child and is
    # collapsed. p0 has the two children p1 and p7 and is the single node below the root,
    # so it is the root.
    expected = ClassTree.from_parents(
        {"p0": None, "p1": "p0", "p7": "p0", "c0": "p1", "c1": "p1", "c2": "p7", "c3": "p7"},
        ["c0", "c1", "c2", "c3"],
    )
    assert tree == expected
    assert tree.paths == (("p1", "c0"), ("p1", "c1"), ("p7", "c2"), ("p7", "c3"))
    assert internal == 3
    np.testing.assert_array_equal(
        tree.distance_matrix(), [[0, 2, 4, 4], [2, 0, 4, 4], [4, 4, 0, 2], [4, 4, 2, 0]]
    )


def test_proxies_with_one_class_each_give_a_star():
    # Every class has its own nearest proxy, which has no other child: all are collapsed.
    classes = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    tree, internal = induced_tree(classes, 3 * classes, "euclidean")
    assert tree.paths == (("c0",), ("c1",), ("c2",))
    assert internal == 0


def test_poincare_depth_and_distance_decide_the_parent():
    # p3 is the nearest proxy of x (c0) in both geometries. For z (c2), p3 is Euclidean-
    # nearest (0.105 against 0.173 to p2) but p2, nearer the origin, is Poincaré-nearest
    # (1.66 against 2.04). y (c1) takes p1 in both.
    proxies = np.array([[0, 0], _polar(0.94, 0.12662879915811553), [0.8, 0], _polar(0.96, 0.01)])
    x, y, z = [0.95, 0.0], _polar(0.95, 0.3), _polar(0.95, -0.1)
    classes = np.array([x, y, z])
    # Euclidean: p3 (x, z) -> p1 (with y) -> p2 -> p0; p2 and p0 have one child each, so p1
    # is the root.
    euclidean, kept = induced_tree(classes, proxies, "euclidean")
    assert euclidean.paths == (("p3", "c0"), ("c1",), ("p3", "c2"))
    assert kept == 2
    # Poincaré: p3 (x) -> p2 (z) and p1 (y) -> p2; p3 and p1 have one child each and are
    # collapsed, so p2 holds all three classes: a star.
    poincare, kept = induced_tree(classes, proxies, "poincare", curvature=1.0)
    assert poincare.paths == (("c0",), ("c1",), ("c2",))
    assert kept == 1


def _assert_lca_spearman(
    measures: dict, classes: np.ndarray, proxies: np.ndarray, tree: ClassTree, metric: str
) -> None:
    """The lca_* measures against scipy's Spearman on brute-force LCA distances: per class
    (column) with and without the self-entry, combined by the Fisher-z mean
    tanh(mean(artanh r)) of the ProxyDR code (r clipped to 1 - 1e-12 so that a perfect
    column stays finite), and over the pairs i < j."""
    lca = _brute_force_lca(classes, proxies, metric)
    tree_dist = tree.distance_matrix()
    n = len(lca)

    def fisher_mean(rs: list[float]) -> float:
        return float(np.tanh(np.mean(np.arctanh(np.clip(rs, -1 + 1e-12, 1 - 1e-12)))))

    with_self = [stats.spearmanr(lca[:, i], tree_dist[:, i]).statistic for i in range(n)]
    without_self = [
        stats.spearmanr(np.delete(lca[:, i], i), np.delete(tree_dist[:, i], i)).statistic
        for i in range(n)
    ]
    upper = np.triu_indices(n, k=1)
    expected = {
        "lca_classwise_spearman": fisher_mean(with_self),
        "lca_classwise_spearman_noself": fisher_mean(without_self),
        "lca_elementwise_spearman": stats.spearmanr(lca[upper], tree_dist[upper]).statistic,
    }
    assert {key: measures[key] for key in expected} == pytest.approx(expected, rel=1e-9)


def _two_level_config(metric: str) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Proxies and classes laid out as TRUE_TREE: 2 top nodes, 4 mid nodes, 8 leaves."""
    proxies, classes = [], []
    for top in (0.0, math.pi):
        proxies.append(_polar(1, top))
        for mid in (top - 0.35, top + 0.35):
            proxies.append(_polar(2, mid))
            classes += [_polar(3, mid - 0.09), _polar(3, mid + 0.09)]
    if metric == "euclidean":
        return np.array(classes), np.array(proxies), None
    return 0.3 * np.array(classes), 0.3 * np.array(proxies), CURVATURE


TRUE_TREE = ClassTree.from_paths(
    [(f"g{i // 4}", f"s{i // 2}", f"leaf{i}") for i in range(8)],
)


@pytest.mark.parametrize("metric", ["euclidean", "poincare"])
def test_proxies_laid_out_as_the_tree_recover_it(metric):
    classes, proxies, curvature = _two_level_config(metric)
    # A jitter far below the layout's spacing breaks its symmetries, which tie LCA distances
    # exactly: their Spearman ranks would be decided by rounding alone.
    rng = np.random.default_rng(5)
    spacing = np.linalg.norm(classes[0] - classes[1])
    classes = classes + 1e-3 * spacing * rng.normal(size=classes.shape)
    proxies = proxies + 1e-3 * spacing * rng.normal(size=proxies.shape)
    measures = induced_tree_measures(classes, proxies, TRUE_TREE, metric, curvature)
    assert measures["induced_rf"] == 0
    assert measures["induced_norm_rf"] == 0
    assert measures["induced_internal_nodes"] == 6
    assert measures["induced_elementwise_spearman"] == pytest.approx(1.0, abs=1e-12)
    assert measures["induced_classwise_spearman"] == pytest.approx(1.0, abs=1e-9)
    assert measures["num_classes"] == 8
    _assert_lca_spearman(measures, classes, proxies, TRUE_TREE, metric)


def test_scrambled_classes_give_a_positive_rf():
    classes, proxies, _ = _two_level_config("euclidean")
    # Swapping the points of classes 1 and 2 turns the splits {0, 1} and {2, 3} into
    # {0, 2} and {1, 3}: two splits missing and two extra, out of 2 (8 - 3) = 10.
    measures = induced_tree_measures(
        classes[[0, 2, 1, 3, 4, 5, 6, 7]], proxies, TRUE_TREE, "euclidean"
    )
    assert measures["induced_rf"] == 4
    assert measures["induced_norm_rf"] == pytest.approx(0.4)
    assert measures["induced_elementwise_spearman"] < 1


def test_sphere_metrics_have_no_induced_tree():
    rng = np.random.default_rng(2)
    classes, proxies = rng.normal(size=(8, 3)), rng.normal(size=(4, 3))
    with pytest.raises(HierpipeError, match="depth"):
        induced_tree(classes, proxies, "chord")
    measures = induced_tree_measures(classes, proxies, TRUE_TREE, "cosine")
    induced = {key: value for key, value in measures.items() if key.startswith("induced_")}
    assert len(induced) == 5
    assert all(math.isnan(value) for value in induced.values())
    # the LCA view needs no depth and is computed on the sphere as anywhere else
    _assert_lca_spearman(measures, classes, proxies, TRUE_TREE, "cosine")


def test_fewer_than_three_classes_give_no_measures():
    tree = ClassTree.from_paths([("a", "x"), ("b", "y")])
    assert induced_tree_measures(np.eye(2), np.zeros((1, 2)), tree, "euclidean") == {}


def _random_tree(rng: np.random.Generator, n: int) -> ClassTree:
    """Random multifurcating, generally unbalanced tree over leaves 0..n-1."""
    paths: list[tuple[str, ...]] = [()] * n

    def split(leaves: list[int], prefix: tuple[str, ...]) -> None:
        if len(leaves) == 1:
            paths[leaves[0]] = (*prefix, f"leaf{leaves[0]}")
            return
        parts = rng.integers(2, min(3, len(leaves)) + 1)
        cuts = np.sort(rng.choice(np.arange(1, len(leaves)), size=parts - 1, replace=False))
        for k, group in enumerate(np.split(rng.permutation(leaves), cuts)):
            split(list(group), (*prefix, f"{'_'.join(prefix)}n{k}"))

    split(list(range(n)), ())
    return ClassTree.from_paths(paths)


def _newick(tree: ClassTree) -> str:
    def subtree(prefix: tuple[str, ...]) -> str:
        leaves = [i for i, path in enumerate(tree.paths) if path[: len(prefix)] == prefix]
        if len(leaves) == 1 and len(tree.paths[leaves[0]]) == len(prefix) + 1:
            return f"t{leaves[0]}"
        children = sorted({tree.paths[i][len(prefix)] for i in leaves})
        return "(" + ",".join(subtree((*prefix, child)) for child in children) + ")"

    return subtree(()) + ";"


def test_rf_matches_dendropy_on_random_unbalanced_trees():
    rng = np.random.default_rng(3)
    taxa = dendropy.TaxonNamespace()
    for n in (4, 7, 12):
        for _ in range(4):
            a, b = _random_tree(rng, n), _random_tree(rng, n)
            trees = [
                dendropy.Tree.get(
                    data=_newick(t), schema="newick", taxon_namespace=taxa, rooting="force-unrooted"
                )
                for t in (a, b)
            ]
            expected = treecompare.symmetric_difference(*trees)
            assert class_tree_robinson_foulds(a, b)["rf"] == expected


def test_rf_matches_upgma_rf_on_balanced_binary_trees():
    # UPGMA reproduces a tree whose leaves are all at one depth, so both routes must agree.
    rng = np.random.default_rng(4)
    for _ in range(5):
        a, b = (
            ClassTree.from_paths(
                [(f"g{i // 4}", f"s{i // 2}", f"leaf{i}") for i in rng.permutation(8)]
            )
            for _ in range(2)
        )
        assert class_tree_robinson_foulds(a, b) == robinson_foulds(
            a.distance_matrix(), b.distance_matrix()
        )


def test_rf_compares_unrooted_and_matches_classes_by_position():
    # ((0, 1), (2, 3, 4)) and (0, (1, (2, 3, 4))) differ only in where the root sits: unrooted,
    # both have the single split 01 | 234, and their class names differ on purpose.
    a = ClassTree.from_paths([("x", "a0"), ("x", "a1"), ("y", "a2"), ("y", "a3"), ("y", "a4")])
    b = ClassTree.from_paths(
        [("b0",), ("u", "b1"), ("u", "v", "b2"), ("u", "v", "b3"), ("u", "v", "b4")]
    )
    assert class_tree_robinson_foulds(a, b) == {"rf": 0, "max_rf": 2, "norm_rf": 0.0}
    # a star resolves nothing: every split of the other tree is missing from it
    star = ClassTree.from_paths([(f"a{i}",) for i in range(5)])
    assert class_tree_robinson_foulds(star, a) == {"rf": 1, "max_rf": 1, "norm_rf": 1.0}
    small = ClassTree.from_paths([("x", "a0"), ("x", "a1"), ("a2",)])
    result = class_tree_robinson_foulds(small, small)
    assert result["rf"] == 0
    assert math.isnan(result["norm_rf"])


@pytest.mark.parametrize(
    ("classes", "proxies", "metric", "curvature", "message"),
    [
        (np.ones(8), np.ones((2, 2)), "euclidean", None, r"class_points: expected a 2-D \(C, D\)"),
        (np.ones((8, 2)), np.ones((0, 2)), "euclidean", None, r"proxies: .* at least one row"),
        (np.ones((8, 2)), np.ones((2, 3)), "euclidean", None, "same dimension D, got 2 and 3"),
        (np.full((8, 2), np.nan), np.ones((2, 2)), "euclidean", None, "class_points: .*finite"),
        (np.ones((8, 2)), [[1.0, math.inf]], "euclidean", None, "proxies: .*finite"),
        (np.ones((7, 2)), np.ones((2, 2)), "euclidean", None, "expected 8 rows, one per class"),
        (np.ones((8, 2)), np.ones((2, 2)), "poincare", 1.0, r"class_points: .*inside .* row 0"),
        (np.ones((8, 2)), np.ones((2, 2)), "hyperbolic", None, "metric: unknown"),
        (np.ones((8, 2)), np.ones((2, 2)), "euclidean", 1.0, "curvature: only applies"),
    ],
)
def test_bad_inputs_are_named(classes, proxies, metric, curvature, message):
    with pytest.raises(HierpipeError, match=message):
        induced_tree_measures(classes, proxies, TRUE_TREE, metric, curvature)


def test_trees_are_checked():
    with pytest.raises(HierpipeError, match="tree: expected a ClassTree"):
        induced_tree_measures(np.ones((8, 2)), np.ones((2, 2)), np.zeros((8, 8)), "euclidean")
    with pytest.raises(HierpipeError, match="same classes, got 8 and 3"):
        class_tree_robinson_foulds(TRUE_TREE, ClassTree.from_paths([("a",), ("b",), ("c",)]))
