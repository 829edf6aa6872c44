import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.cluster import hierarchy
from scipy.spatial.distance import pdist, squareform

from hierpipe.core.errors import HierpipeError
from hierpipe.evaluation.metrics import (
    ahd_at_k,
    ahs,
    average_hierarchical_cost,
    classwise_spearman,
    elementwise_spearman,
    hierarchical_similarity_at_k,
    hp_at_k,
    mistake_severity,
    nearest_neighbours,
    robinson_foulds,
)
from hierpipe.evaluation.metrics.hierarchy import _spearman

# Two top-level groups of four leaves each: siblings at distance 2, cousins at distance 4.
GROUPS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
TREE = np.where(GROUPS[:, None] == GROUPS[None, :], 2.0, 4.0)
np.fill_diagonal(TREE, 0.0)


def _random_rep_dist(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, 5))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    d = np.sqrt(np.clip(2 - 2 * v @ v.T, 0, None))
    np.fill_diagonal(d, 0.0)  # round-off leaves ~1e-8 there; a tree_dist must have exact zeros
    return d


def _fisher_mean(rs: list[float]) -> float:
    z = [0.5 * math.log((1 + r) / (1 - r)) for r in rs]
    return math.tanh(sum(z) / len(z))


@pytest.mark.parametrize("include_self", [True, False])
def test_classwise_matches_per_column_scipy_loop(include_self):
    rep = _random_rep_dist(8, seed=3)
    rs, ps = [], []
    for i in range(8):
        keep = [j for j in range(8) if include_self or j != i]
        r, p = stats.spearmanr(rep[keep, i], TREE[keep, i])
        rs.append(r)
        ps.append(p)
    rho, p = classwise_spearman(rep, TREE, include_self=include_self)
    assert rho == pytest.approx(_fisher_mean(rs), abs=1e-12)
    assert p == pytest.approx(len(ps) / sum(1 / q for q in ps), rel=1e-12)


@pytest.mark.parametrize("n", [2, 3, 4, 9, 40, 300])
@pytest.mark.parametrize("levels", [1, 2, 5, 10_000])
def test_spearman_is_scipys_with_ties_constants_and_few_points(n, levels):
    rng = np.random.default_rng(n * levels)
    for _ in range(5):
        a = rng.integers(0, levels, n).astype(float)
        b = rng.integers(0, max(levels // 2, 1), n) + 0.3 * a
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", stats.ConstantInputWarning)
            expected = stats.spearmanr(a, b)
        rho, p = _spearman(a, b)
        assert rho == pytest.approx(expected.statistic, abs=1e-12, nan_ok=True)
        # at |rho| = 1 the p-value is 0, or within rounding of it (scipy: 1 - 2e-16 gives 5e-56)
        assert p == pytest.approx(expected.pvalue, rel=1e-9, abs=1e-12, nan_ok=True)


def test_monotone_transform_of_the_tree_gives_rho_one_and_stays_finite():
    rep = np.sqrt(TREE) * 0.7 + TREE**2
    rho, p = classwise_spearman(rep, TREE)
    assert rho == pytest.approx(1.0, abs=1e-9)
    assert p == pytest.approx(0.0, abs=1e-12)
    assert elementwise_spearman(rep, TREE)[0] == pytest.approx(1.0)


def test_self_entry_lifts_a_perfectly_reversed_ranking():
    # Tree: distances of points 0, 1, 3, 7 on a line, so every column has distinct
    # off-diagonal entries; rep reverses their order but keeps the self-entry smallest.
    pos = np.array([0.0, 1.0, 3.0, 7.0])
    tree = np.abs(pos[:, None] - pos[None, :])
    rep = 10.0 - tree
    np.fill_diagonal(rep, 0.0)
    # Without self: ranks (1,2,3) vs (3,2,1) -> -1 in every column.
    # With self: ranks (1,2,3,4) vs (1,4,3,2), sum d^2 = 8 -> 1 - 6*8/(4*15) = 0.2.
    assert classwise_spearman(rep, tree, include_self=False)[0] == pytest.approx(-1.0, abs=1e-9)
    assert classwise_spearman(rep, tree, include_self=True)[0] == pytest.approx(0.2, abs=1e-12)


def test_constant_columns_are_skipped():
    tree = TREE.copy()
    tree[0, 1:] = tree[1:, 0] = 3.0  # class 0 equally far from all others
    rep = _random_rep_dist(8, seed=5)
    expected = []
    for i in range(1, 8):
        keep = [j for j in range(8) if j != i]
        expected.append(stats.spearmanr(rep[keep, i], tree[keep, i])[0])
    rho, p = classwise_spearman(rep, tree, include_self=False)
    assert rho == pytest.approx(_fisher_mean(expected), abs=1e-12)
    assert not math.isnan(p)


def test_all_columns_undefined_gives_nan():
    flat = np.ones((4, 4)) - np.eye(4)
    rho, p = classwise_spearman(_random_rep_dist(4, seed=0), flat, include_self=False)
    assert math.isnan(rho)
    assert math.isnan(p)


def test_elementwise_matches_scipy_on_upper_triangle():
    rep = _random_rep_dist(8, seed=11)
    pairs = [(i, j) for i in range(8) for j in range(i + 1, 8)]
    expected = stats.spearmanr([rep[i, j] for i, j in pairs], [TREE[i, j] for i, j in pairs])
    rho, p = elementwise_spearman(rep, TREE)
    assert rho == pytest.approx(expected.statistic, abs=1e-12)
    assert p == pytest.approx(expected.pvalue, rel=1e-9)


def test_average_hierarchical_cost_hand_example():
    #        root
    #       /    \
    #      x      y
    #     / \     |
    #    0   1    2
    tree = np.array([[0.0, 2.0, 4.0], [2.0, 0.0, 4.0], [4.0, 4.0, 0.0]])
    pred = np.array([0, 1, 2, 2, 0])
    target = np.array([0, 0, 0, 2, 1])
    # costs: 0 (right), 2 (sibling), 4 (other branch), 0 (right), 2 (sibling)
    assert average_hierarchical_cost(pred, target, tree) == pytest.approx(8 / 5)


@pytest.mark.parametrize(
    ("rep", "tree", "match"),
    [
        (np.zeros((3, 4)), np.zeros((3, 4)), "rep_dist: expected a square"),
        (np.zeros((3, 3)), np.zeros((4, 4)), "expected the same shape"),
        (np.zeros((1, 1)), np.zeros((1, 1)), "C >= 2"),
        (np.full((3, 3), np.nan), np.zeros((3, 3)), "rep_dist: expected finite"),
        (np.zeros((3, 3)), np.full((3, 3), np.inf), "tree_dist: expected finite"),
    ],
)
def test_spearman_bad_input(rep, tree, match):
    for fn in (classwise_spearman, elementwise_spearman):
        with pytest.raises(HierpipeError, match=match):
            fn(rep, tree)


@pytest.mark.parametrize(
    ("pred", "target", "tree", "match"),
    [
        (
            np.array([0, 3]),
            np.array([0, 1]),
            np.zeros((3, 3)),
            r"pred: expected labels in \[0, 2\]",
        ),
        (np.array([0, 1]), np.array([-1, 1]), np.zeros((3, 3)), "target: expected labels"),
        (np.array([0, 1]), np.array([0]), np.zeros((3, 3)), "expected the same length"),
        (np.array([0.0, 1.0]), np.array([0, 1]), np.zeros((3, 3)), "pred: expected a non-empty"),
        (np.array([], dtype=int), np.array([], dtype=int), np.zeros((3, 3)), "pred: expected"),
        (np.array([0]), np.array([0]), np.zeros((2, 3)), "tree_dist: expected a square"),
        (np.array([0]), np.array([0]), np.full((2, 2), np.nan), "tree_dist: expected finite"),
    ],
)
def test_ahc_bad_input(pred, target, tree, match):
    with pytest.raises(HierpipeError, match=match):
        average_hierarchical_cost(pred, target, tree)


# --- shared helpers for the tree-distance measures -------------------------------------------


def _tree_dist(paths: list[tuple[str, ...]]) -> np.ndarray:
    """(La - k) + (Lb - k), k = common-prefix length, straight from root-to-leaf paths."""
    n = len(paths)
    tree = np.zeros((n, n))
    for a in range(n):
        for b in range(n):
            k = 0
            while k < min(len(paths[a]), len(paths[b])) and paths[a][k] == paths[b][k]:
                k += 1
            tree[a, b] = len(paths[a]) + len(paths[b]) - 2 * k
    return tree


def _random_paths(n: int, seed: int) -> list[tuple[str, ...]]:
    """Leaves c0..c{n-1} under a random hierarchy with depths 1 to 4."""
    rng = np.random.default_rng(seed)
    return [
        (*(f"n{rng.integers(2)}" for _ in range(rng.integers(0, 4))), f"c{i}") for i in range(n)
    ]


#          root
#        /      \
#       A        B
#      / \      / \
#    a1   a2  b1   b2      leaves 0-2 under a1, 3-5 under a2, 6-8 under b1, 9-11 under b2
HAND_GROUPS = [("A", "a1"), ("A", "a2"), ("B", "b1"), ("B", "b2")]
HAND = _tree_dist([(*HAND_GROUPS[c // 3], f"c{c}") for c in range(12)])


def test_hand_tree_distances():
    assert HAND[0, [0, 1, 2, 3, 5, 6, 11]].tolist() == [0, 2, 2, 4, 4, 6, 6]


# --- Robinson-Foulds ---------------------------------------------------------------------------


def _ultrametric(clusters: list[tuple[set[int], float]], n: int, top: float) -> np.ndarray:
    """Distance = height of the smallest listed cluster holding both leaves, else ``top``."""
    d = np.full((n, n), top)
    for members, height in sorted(clusters, key=lambda c: -c[1]):
        for a in members:
            for b in members:
                d[a, b] = height
    np.fill_diagonal(d, 0.0)
    return d


def test_robinson_foulds_identical_and_monotone_transform_give_zero():
    got = robinson_foulds(_random_rep_dist(9, seed=1), _random_rep_dist(9, seed=1))
    assert got == {"rf": 0, "max_rf": 12, "norm_rf": 0.0}
    rep = _random_rep_dist(9, seed=2)
    assert robinson_foulds(rep, rep**2 + 1 - np.eye(9))["rf"] == 0


def test_robinson_foulds_hand_case_differs_by_two_splits():
    # Leaves a..e = 0..4. First tree ((a,b),c),(d,e): unrooted splits ab|cde and de|abc.
    # Second tree ((a,c),b),(d,e): splits ac|bde and de|abc. One split each is unshared.
    first = _ultrametric([({0, 1}, 2.0), ({0, 1, 2}, 4.0), ({3, 4}, 3.0)], 5, top=8.0)
    second = _ultrametric([({0, 2}, 2.0), ({0, 1, 2}, 4.0), ({3, 4}, 3.0)], 5, top=8.0)
    assert robinson_foulds(first, second) == {"rf": 2, "max_rf": 4, "norm_rf": 0.5}


def test_robinson_foulds_small_trees():
    got = robinson_foulds(_random_rep_dist(3, seed=0), _random_rep_dist(3, seed=1))
    assert got["rf"] == got["max_rf"] == 0
    assert math.isnan(got["norm_rf"])


def _splits(dist: np.ndarray, method: str) -> set[frozenset[int]]:
    """Non-trivial unrooted splits of scipy's `method` tree, each as the side without leaf 0."""
    n = len(dist)
    clusters = [frozenset([i]) for i in range(n)]
    for a, b, *_ in hierarchy.linkage(squareform(dist, checks=False), method=method):
        clusters.append(clusters[int(a)] | clusters[int(b)])
    everyone = frozenset(range(n))
    sides = {c if 0 not in c else everyone - c for c in clusters}
    return {s for s in sides if 1 < len(s) < n - 1}


@settings(max_examples=25, deadline=None)
@given(n=st.integers(4, 12), seed_a=st.integers(0, 10**6), seed_b=st.integers(0, 10**6))
def test_robinson_foulds_properties(n, seed_a, seed_b):
    a, b = _random_rep_dist(n, seed_a), _random_rep_dist(n, seed_b)
    # WPGMA is scipy's "weighted" linkage, UPGMA its "average"
    for linkage_name, method in (("wpgma", "weighted"), ("upgma", "average")):
        forward, backward = robinson_foulds(a, b, linkage_name), robinson_foulds(b, a, linkage_name)
        assert forward == backward
        assert 0 <= forward["rf"] <= forward["max_rf"] == 2 * (n - 3)
        assert forward["rf"] == len(_splits(a, method) ^ _splits(b, method))


def test_wpgma_and_upgma_differ_as_the_public_code_and_hierpipe_did():
    # Six points; the true tree is the UPGMA tree of their distances (its cophenetic
    # distances). ProxyDR's code (Biopython's unweighted "upgma", i.e. WPGMA) gives RF 2 of 6
    # on these distances, true UPGMA 0.
    points = np.array([[8, 10], [10, 6], [18, 7], [13, 7], [8, 19], [3, 12]], dtype=float)
    rep = squareform(pdist(points))
    true = squareform(hierarchy.cophenet(hierarchy.linkage(pdist(points), method="average")))
    assert robinson_foulds(rep, true, "wpgma") == {"rf": 2, "max_rf": 6, "norm_rf": 2 / 6}
    assert robinson_foulds(rep, true, "upgma") == {"rf": 0, "max_rf": 6, "norm_rf": 0.0}


# --- AHC, mistake severity, AHD@k, HP@k -------------------------------------------------------

# Sample 0: target 0, top-2 = (1 sibling D2, 3 cousin D4); sample 1: target 7, top-2 = (7, 0 D6).
HAND_SCORES = np.zeros((2, 12))
HAND_SCORES[0, [1, 3]] = [2.0, 1.0]
HAND_SCORES[1, [7, 0]] = [2.0, 1.0]
HAND_TARGET = np.array([0, 7])


def test_ahd_hand_case():
    assert ahd_at_k(HAND_SCORES, HAND_TARGET, HAND, k=2) == pytest.approx((3 + 3) / 2)
    assert ahd_at_k(HAND_SCORES, HAND_TARGET, HAND, k=1) == pytest.approx((2 + 0) / 2)


@pytest.mark.parametrize(
    ("k", "definition", "expected"),
    [
        # Sorted row of any class: 0, 2, 2, 4, 4, 4, 6 x 6.
        # code k=2: radius = sorted[3] = 4, S = own top group; hits 2/2 and 1/2.
        (2, "code", (1 + 1 / 2) / 2),
        # devise k=2: radius = sorted[1] = 2, S = own 3-leaf group; hits 1/2 and 1/2.
        (2, "devise", (1 / 2 + 1 / 2) / 2),
        # code k=1: radius = sorted[2] = 2; the sibling 1 and the target 7 both count.
        (1, "code", 1.0),
        # devise k=1: radius = sorted[0] = 0, S = the target alone.
        (1, "devise", 1 / 2),
    ],
)
def test_hp_hand_case_code_and_devise_differ(k, definition, expected):
    got = hp_at_k(HAND_SCORES, HAND_TARGET, HAND, k=k, definition=definition)
    assert got == pytest.approx(expected)


def test_cost_measures_match_brute_force_loops():
    rng = np.random.default_rng(4)
    tree = _tree_dist(_random_paths(15, seed=4))
    n, k = 60, 4
    scores = rng.normal(size=(n, 15))
    target = rng.integers(0, 15, size=n)
    pred = scores.argmax(axis=1)
    ahd, hp_code, hp_devise, costs, mistakes = 0.0, 0.0, 0.0, [], []
    for i in range(n):
        top = sorted(range(15), key=lambda c: -scores[i, c])[:k]
        row = sorted(tree[target[i]])
        ahd += sum(tree[c, target[i]] for c in top) / k / n
        hp_code += sum(tree[target[i], c] <= row[1 + k] for c in top) / k / n
        hp_devise += sum(tree[target[i], c] <= row[k - 1] for c in top) / k / n
        costs.append(tree[pred[i], target[i]])
        if pred[i] != target[i]:
            mistakes.append(tree[pred[i], target[i]])
    assert ahd_at_k(scores, target, tree, k=k) == pytest.approx(ahd)
    assert hp_at_k(scores, target, tree, k=k) == pytest.approx(hp_code)
    assert hp_at_k(scores, target, tree, k=k, definition="devise") == pytest.approx(hp_devise)
    assert hp_code != pytest.approx(hp_devise)  # the random tree separates the definitions
    assert average_hierarchical_cost(pred, target, tree) == pytest.approx(np.mean(costs))
    assert mistake_severity(pred, target, tree) == pytest.approx(np.mean(mistakes))


def test_mistake_severity_hand_case_and_no_mistakes():
    pred = np.array([0, 1, 2, 2, 0])
    target = np.array([0, 0, 6, 2, 1])
    # mistakes: 1 vs 0 (D2), 2 vs 6 (D6), 0 vs 1 (D2)
    assert mistake_severity(pred, target, HAND) == pytest.approx(10 / 3)
    assert average_hierarchical_cost(pred, target, HAND) == pytest.approx(10 / 5)
    assert math.isnan(mistake_severity(target, target, HAND))


# --- HS@k and AHS ------------------------------------------------------------------------------

# Classes 0 and 1 are siblings (D = 2), class 2 is further away (D = 4).
SMALL = np.array([[0.0, 2.0, 4.0], [2.0, 0.0, 4.0], [4.0, 4.0, 0.0]])
S0, S2, S4 = 1.0, 1 - (2 / 3) ** 2, 1 - (4 / 5) ** 2  # sigma for D = 0, 2, 4 with beta = 1


def test_hs_hand_case_query_set_is_its_own_reference():
    labels = np.array([0, 0, 1, 2])
    knn = np.array([[1, 0, 2], [0, 1, 2], [2, 0, 0], [0, 1, 0]])
    # Ideal pools without one own-class instance: q0, q1 {0, 1, 2}; q2 {0, 0, 2}; q3 {0, 0, 1}.
    hs1 = [S2 / S0, 1.0, S4 / S2, 1.0]
    hs2 = [1.0, 1.0, (S4 + S2) / (2 * S2), 1.0]
    got = hierarchical_similarity_at_k(labels, knn, labels, SMALL, ks=(1, 2, 3))
    assert got == pytest.approx({"hs@1": np.mean(hs1), "hs@2": np.mean(hs2), "hs@3": 1.0})
    expected_ahs = (np.mean(hs1) / 2 + np.mean(hs2) + 1.0 / 2) / 2
    assert ahs(labels, knn, labels, SMALL, k_max=250) == pytest.approx(expected_ahs)
    assert ahs(labels, knn, labels, SMALL, k_max=3) == pytest.approx(expected_ahs)


def test_hs_hand_case_separate_reference():
    reference = np.array([0, 1, 2, 2])
    # Query of class 0 finds (2, 1), ideal (0, 1); query of class 2 finds and ideally (2, 2).
    got = hierarchical_similarity_at_k(
        np.array([0, 2]),
        np.array([[2, 1], [2, 2]]),
        reference,
        SMALL,
        ks=(1, 2),
        exclude_self=False,
    )
    assert got == pytest.approx({"hs@1": (S4 + 1) / 2, "hs@2": ((S4 + S2) / (S0 + S2) + 1) / 2})


def _brute_force_hs(query_labels, knn_labels, reference_labels, tree, ks, self_reference):
    sim = 1 - (tree / (1 + tree)) ** 2
    out = {k: 0.0 for k in ks}
    for q, y in enumerate(query_labels):
        others = [r for r in range(len(reference_labels)) if not (self_reference and r == q)]
        ideal = sorted((sim[y, reference_labels[r]] for r in others), reverse=True)
        for k in ks:
            found = sum(sim[y, c] for c in knn_labels[q, :k])
            out[k] += found / sum(ideal[:k]) / len(query_labels)
    return out


@pytest.mark.parametrize("self_reference", [True, False])
def test_hs_and_ahs_match_a_per_query_brute_force(self_reference):
    rng = np.random.default_rng(8)
    tree = _tree_dist(_random_paths(10, seed=8))
    labels = rng.integers(0, 10, size=120)
    x = rng.normal(size=(10, 6))[labels] + rng.normal(size=(120, 6))
    if self_reference:
        queries, query_labels, reference, reference_labels = x, labels, None, labels
    else:
        queries, query_labels = x[:40], labels[:40]
        reference, reference_labels = x[40:], labels[40:]
    knn = reference_labels[nearest_neighbours(queries, 25, reference)]
    ks = tuple(range(1, 26))
    expected = _brute_force_hs(query_labels, knn, reference_labels, tree, ks, self_reference)
    got = hierarchical_similarity_at_k(
        query_labels, knn, reference_labels, tree, ks=ks, exclude_self=self_reference
    )
    assert got == pytest.approx({f"hs@{k}": v for k, v in expected.items()})
    assert 0.3 < got["hs@1"] < 0.95
    curve = [expected[k] for k in ks]
    area = (sum(curve) - (curve[0] + curve[-1]) / 2) / 24
    assert ahs(
        query_labels, knn, reference_labels, tree, k_max=25, exclude_self=self_reference
    ) == pytest.approx(area)


# --- the self-entry bias of the classwise correlation (docs/methods/hierarchy_measures.md) -------


def test_classwise_self_entry_bias_on_random_vectors():
    # A CIFAR-100-shaped tree: 3 / 7 / 20 / 100 nodes per level, every leaf at depth 4.
    leaf = np.arange(100)
    ids = np.stack([leaf % 20 % 7 % 3, leaf % 20 % 7, leaf % 20, leaf])
    tree = 2 * (4 - (ids[:, :, None] == ids[:, None, :]).sum(axis=0))
    with_self, without_self = [], []
    for draw in range(5):
        v = np.random.default_rng(draw).normal(size=(100, 128))
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        rep = np.sqrt(np.clip(2 - 2 * v @ v.T, 0, None))
        with_self.append(classwise_spearman(rep, tree, include_self=True)[0])
        without_self.append(classwise_spearman(rep, tree, include_self=False)[0])
    assert 0.01 <= np.mean(with_self) <= 0.08
    assert abs(np.mean(without_self)) <= 0.02


# --- bad input ---------------------------------------------------------------------------------

ASYMMETRIC = SMALL.copy()
ASYMMETRIC[0, 1] = 3.0
DIAGONAL = SMALL + np.eye(3)
NEGATIVE = SMALL.copy()
NEGATIVE[0, 1] = NEGATIVE[1, 0] = -1.0
SCORES3 = np.array([[0.2, 0.5, 0.3], [0.1, 0.1, 0.8]])
TARGET3 = np.array([1, 2])


def _call_everything(tree: np.ndarray) -> list:
    labels = np.array([0, 1, 2, 2])
    knn = np.array([[1], [0], [2], [2]])
    return [
        lambda: classwise_spearman(_random_rep_dist(3, 0), tree),
        lambda: elementwise_spearman(_random_rep_dist(3, 0), tree),
        lambda: robinson_foulds(_random_rep_dist(3, 0), tree),
        lambda: average_hierarchical_cost(TARGET3, TARGET3, tree),
        lambda: mistake_severity(TARGET3, TARGET3, tree),
        lambda: ahd_at_k(SCORES3, TARGET3, tree, k=1),
        lambda: hp_at_k(SCORES3, TARGET3, tree, k=1),
        lambda: hierarchical_similarity_at_k(labels, knn, labels, tree, ks=(1,)),
        lambda: ahs(labels, knn, labels, tree, k_max=2),
    ]


@pytest.mark.parametrize(
    ("tree", "match"),
    [
        (ASYMMETRIC, r"tree_dist: expected a symmetric matrix, got D\[0, 1\] = 3"),
        (DIAGONAL, r"tree_dist: expected a zero diagonal, got D\[0, 0\] = 1"),
        (NEGATIVE, r"tree_dist: expected non-negative distances, got D\[0, 1\] = -1"),
        (np.zeros((3, 2)), r"tree_dist: expected a square"),
        (np.array([["a"] * 3] * 3), "tree_dist: expected a numeric"),
    ],
)
def test_every_tree_dist_consumer_validates_it(tree, match):
    for call in _call_everything(tree):
        with pytest.raises(HierpipeError, match=match):
            call()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ahd_at_k(SCORES3[:, :2], TARGET3 - 1, SMALL, k=1), "scores: expected 3 columns"),
        (lambda: hp_at_k(np.ones((2, 4)), TARGET3, SMALL, k=1), "scores: expected 3 columns"),
        (lambda: ahd_at_k(SCORES3, TARGET3, SMALL, k=4), "k: expected at most 3"),
        (lambda: hp_at_k(SCORES3, TARGET3, SMALL, k=4, definition="devise"), "at most 3"),
        (lambda: hp_at_k(SCORES3, TARGET3, SMALL, k=2), "k: expected at most 1 for definit"),
        (lambda: hp_at_k(SCORES3, TARGET3, SMALL, k=1, definition="x"), "definition: expec"),
        (lambda: ahd_at_k(SCORES3, TARGET3, SMALL, k=0), "k: expected an integer >= 1"),
        (lambda: ahd_at_k(SCORES3, TARGET3[:1], SMALL), "target: expected 2 labels"),
        (lambda: ahd_at_k(SCORES3, np.array([0, 3]), SMALL), r"target: expected labels in"),
    ],
)
def test_ranking_measures_bad_input(call, match):
    with pytest.raises(HierpipeError, match=match):
        call()


LABELS4 = np.array([0, 1, 2, 2])
KNN4 = np.array([[1, 2], [0, 2], [2, 0], [2, 1]])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"knn_labels": KNN4[:3]}, "knn_labels: expected 4 rows"),
        ({"knn_labels": KNN4[:, 0]}, "knn_labels: expected a non-empty 2-D integer"),
        ({"ks": (3,)}, "knn_labels: expected at least 3 neighbours"),
        ({"ks": (4,), "knn_labels": np.zeros((4, 5), int)}, "ks: expected at most 3"),
        ({"reference_labels": np.array([0, 1, 1])}, "reference_labels: with exclude_self"),
        ({"beta": 0.0}, "beta: expected a finite number > 0"),
        ({"query_labels": np.array([0, 1, 2, 3])}, r"query_labels: expected labels in \[0, 2\]"),
    ],
)
def test_hs_bad_input(kwargs, match):
    args = {
        "query_labels": LABELS4,
        "knn_labels": KNN4,
        "reference_labels": LABELS4,
        "tree_dist": SMALL,
        "ks": (1, 2),
    } | kwargs
    with pytest.raises(HierpipeError, match=match):
        hierarchical_similarity_at_k(**args)


def test_ahs_needs_two_points():
    with pytest.raises(HierpipeError, match="k_max: expected a curve of at least 2 points"):
        ahs(LABELS4, KNN4, LABELS4, SMALL, k_max=1)
    with pytest.raises(HierpipeError, match="knn_labels: expected at least 3 neighbours"):
        ahs(LABELS4, KNN4, LABELS4, SMALL)
