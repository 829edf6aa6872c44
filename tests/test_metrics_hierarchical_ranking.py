"""H-AP, ASI and NDCG (HAPPIER's hierarchical ranking measures): hand-computed rankings from
the paper's definitions, a brute-force float64 reference on random trees, the compiled
ranking against direct counts, and bad input."""

import math
from collections import Counter

import geoopt
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from hierpipe.core.errors import HierpipeError
from hierpipe.core.geometry import to_poincare
from hierpipe.core.hierarchy import ClassTree
from hierpipe.evaluation.metrics.hierarchical_ranking import (
    _closer_counts,
    _scratch,
    hierarchical_ranking_metrics,
)

# Two top-level groups; a1 and a2 share group A (depth 1), b1 is alone in B.
HAND_TREE = ClassTree.from_paths([("A", "a1"), ("A", "a2"), ("B", "b1")])


def _hand_case(relevance: str) -> dict[str, float]:
    """A query of class a1 at 0 on a line; the gallery at 1..6, nearest first:
    a2, a1, b1, a1, a2, a2 (shared depths 1, 2, 0, 2, 1, 1)."""
    gallery_labels = np.array([1, 0, 2, 0, 1, 1])
    gallery = np.arange(1.0, 7.0)[:, None]
    return hierarchical_ranking_metrics(
        np.zeros((1, 1)),
        np.array([0]),
        HAND_TREE,
        gallery,
        gallery_labels,
        "euclidean",
        relevance=relevance,
        dtype=torch.float64,
    )


def test_h_ap_by_hand_with_the_level_schedule():
    # rel = l / L: 1/2 at depth 1, 1 at depth 2; relevant ranks 1, 2, 4, 5, 6.
    # H-rank(k) = rel(k) + sum over relevant j ranked before k of min(rel(k), rel(j)):
    # rank 1: 1/2; rank 2: 1 + 1/2; rank 4: 1 + 1/2 + 1; rank 5: 4 x 1/2; rank 6: 5 x 1/2
    h_ranks_over_ranks = 0.5 / 1 + 1.5 / 2 + 2.5 / 4 + 2.0 / 5 + 2.5 / 6
    assert _hand_case("level")["h_ap"] == pytest.approx(h_ranks_over_ranks / 3.5, abs=1e-12)


def test_h_ap_by_hand_with_the_population_schedule():
    # rel = (l / L) / |depth-l references|: 1 / 2 at depth 2, (1/2) / 3 at depth 1
    deep, shallow = 1 / 2, 1 / 6
    h_ranks = [shallow, deep + shallow, deep + shallow + deep, 4 * shallow, 5 * shallow]
    expected = sum(h / r for h, r in zip(h_ranks, [1, 2, 4, 5, 6], strict=True)) / (
        2 * deep + 3 * shallow
    )
    assert _hand_case("population")["h_ap"] == pytest.approx(expected, abs=1e-12)


def test_asi_and_ndcg_by_hand():
    values = _hand_case("population")
    # ranked depths 1 2 0 2 1 | 1, ideal 2 2 1 1 1; N = 5 relevant references.
    # top n shared with the ideal top n: n=1 {} ; 2 {2}; 3 {2, 1}; 4 {2, 2, 1}; 5 {2, 2, 1, 1}
    assert values["asi"] == pytest.approx((0 / 1 + 1 / 2 + 2 / 3 + 3 / 4 + 4 / 5) / 5, abs=1e-12)
    # gain 2^l - 1: 3 at depth 2, 1 at depth 1, over log2(1 + rank)
    dcg = 1 / math.log2(2) + 3 / math.log2(3) + 3 / math.log2(5) + 1 / math.log2(6)
    dcg += 1 / math.log2(7)
    ideal = 3 / math.log2(2) + 3 / math.log2(3) + sum(1 / math.log2(1 + r) for r in (3, 4, 5))
    assert values["ndcg"] == pytest.approx(dcg / ideal, abs=1e-12)


def test_the_schedule_does_not_change_asi_or_ndcg():
    level, population = _hand_case("level"), _hand_case("population")
    assert level["asi"] == population["asi"]
    assert level["ndcg"] == population["ndcg"]


def test_a_one_level_tree_gives_average_precision():
    # with classes directly under the root, relevance is 0 or 1 and H-AP is AP
    rng = np.random.default_rng(3)
    tree = ClassTree.from_paths([(f"c{i}",) for i in range(4)])
    points, labels = rng.standard_normal((40, 5)), rng.integers(0, 4, 40)
    values = hierarchical_ranking_metrics(points, labels, tree, dtype=torch.float64)
    unit = points / np.linalg.norm(points, axis=1, keepdims=True)
    similarity = unit @ unit.T
    aps = []
    for i in range(40):
        others = np.arange(40) != i
        if (labels[others] == labels[i]).any():
            aps.append(average_precision_score(labels[others] == labels[i], similarity[i, others]))
    assert values["h_ap"] == pytest.approx(np.mean(aps), abs=1e-12)


def _random_tree(rng: np.random.Generator) -> ClassTree:
    """Three levels of uneven fan-out, some classes one level shallower."""
    paths = []
    for g in range(rng.integers(2, 4)):
        for m in range(rng.integers(1, 3)):
            for c in range(rng.integers(1, 4)):
                paths.append((f"g{g}", f"g{g}m{m}", f"g{g}m{m}c{c}"))
        paths.append((f"g{g}", f"g{g}leaf"))
    return ClassTree.from_paths(paths)


def _distances(query, reference, distance, curvature):
    if distance == "cosine":
        q = query / np.linalg.norm(query, axis=1, keepdims=True)
        r = reference / np.linalg.norm(reference, axis=1, keepdims=True)
        return 1 - q @ r.T
    if distance == "euclidean":
        return np.linalg.norm(query[:, None] - reference[None], axis=2)
    ball = geoopt.PoincareBall(c=curvature)
    return ball.dist(torch.from_numpy(query)[:, None], torch.from_numpy(reference)[None]).numpy()


def _brute_force(query, q_labels, tree, reference, r_labels, distance, relevance, alpha, c):
    """Straight from the definitions, one query at a time, in float64."""
    self_reference = reference is None
    if self_reference:
        reference, r_labels = query, q_labels
    dist = _distances(query, reference, distance, c)
    depth_of = tree.max_depth
    sums, scored = np.zeros(3), 0
    for i in range(len(query)):
        depth = np.array(
            [depth_of if a == q_labels[i] else len(tree.lca(q_labels[i], a)) for a in r_labels]
        )
        population = Counter(depth.tolist())  # the query itself included, as the public code
        keep = np.arange(len(reference)) != i if self_reference else np.ones(len(reference), bool)
        d, depth = dist[i, keep], depth[keep]
        weight = (depth / depth_of) ** alpha
        if relevance == "population":
            weight = weight / np.array([population[x] for x in depth])
        relevant = np.flatnonzero(depth > 0)
        if len(relevant) == 0:
            continue
        scored += 1
        h_ap = 0.0
        for k in relevant:
            rank = 1 + np.sum(d < d[k])
            closer = relevant[(relevant != k) & (d[relevant] < d[k])]
            h_rank = weight[k] + np.minimum(weight[k], weight[closer]).sum()
            h_ap += h_rank / rank
        sums[0] += h_ap / weight[relevant].sum()
        ranked = depth[np.argsort(d, kind="stable")]
        ideal = np.sort(depth)[::-1]
        n_relevant = len(relevant)
        sums[1] += np.mean(
            [
                sum((Counter(ranked[:n]) & Counter(ideal[:n])).values()) / n
                for n in range(1, n_relevant + 1)
            ]
        )
        discount = np.log2(1 + np.arange(1, len(d) + 1))
        sums[2] += np.sum((2.0**ranked - 1) / discount) / np.sum((2.0**ideal - 1) / discount)
    return dict(zip(("h_ap", "asi", "ndcg"), sums / scored, strict=True))


@pytest.mark.parametrize("distance", ["cosine", "euclidean", "poincare"])
@pytest.mark.parametrize("gallery", [False, True])
@pytest.mark.parametrize("relevance,alpha", [("population", 1.0), ("level", 0.5)])
def test_equals_a_brute_force_reference_on_random_trees(distance, gallery, relevance, alpha):
    for seed in range(3):
        rng = np.random.default_rng(seed)
        tree = _random_tree(rng)
        n, m = 70, 55
        query = rng.standard_normal((n, 4))
        q_labels = rng.integers(0, tree.num_classes, n)
        reference = rng.standard_normal((m, 4)) if gallery else None
        r_labels = rng.integers(0, tree.num_classes, m) if gallery else None
        curvature = 0.1 if distance == "poincare" else None
        if distance == "poincare":
            query = to_poincare(torch.from_numpy(query), curvature, clip_r=2.3).numpy()
            if gallery:
                reference = to_poincare(torch.from_numpy(reference), curvature, clip_r=2.3).numpy()
        # chunks of 16 queries and 16 references: relevant sets wider than a block, queries
        # whose relevant set spans two chunks, blocks with and without relevant pairs
        ours = hierarchical_ranking_metrics(
            query,
            q_labels,
            tree,
            reference,
            r_labels,
            distance,
            relevance=relevance,
            alpha=alpha,
            curvature=curvature,
            chunk_size=16,
            dtype=torch.float64,
        )
        expected = _brute_force(
            query, q_labels, tree, reference, r_labels, distance, relevance, alpha, curvature
        )
        for name, value in expected.items():
            assert ours[name] == pytest.approx(value, abs=1e-12), (seed, name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_closer_counts_equal_direct_counts(dtype):
    """Every relevant key's rank inputs against counting straight from the definition, on
    rows built to hit the grid's edge cases: keys tied within the relevant set and with
    other keys, buckets holding more relevant keys than are compared at once, keys outside
    the relevant range, one relevant key, and all relevant keys equal."""
    rng = np.random.default_rng(11)
    widest, columns = 300, 400
    scratch = _scratch(widest, columns)  # shared by every row: it must be left clean
    for trial in range(300):
        n = int(rng.integers(2, columns + 1))
        if trial % 3 == 0:  # few distinct values: ties everywhere, crowded buckets
            keys = rng.choice(rng.standard_normal(int(rng.integers(1, 12))), n)
        elif trial % 3 == 1:  # a dense cluster inside a wide range
            keys = np.where(rng.random(n) < 0.5, rng.normal(0, 1e-6, n), rng.normal(0, 1, n))
        else:
            keys = rng.standard_normal(n)
        keys = keys.astype(dtype)
        start = int(rng.integers(0, n))
        stop = int(rng.integers(start + 1, min(n, start + widest) + 1))
        relevant = keys[start:stop].copy()
        order, closer = _closer_counts(keys, start, stop, relevant, scratch)
        nearest_first = np.lexsort((np.arange(len(relevant)), -relevant.astype(np.float64)))
        others = np.concatenate([keys[:start], keys[stop:]])
        expected = [(others > relevant[i]).sum() for i in nearest_first]
        assert order.tolist() == nearest_first.tolist(), trial
        assert closer.tolist() == expected, trial
    # relevant keys a few subnormals apart: buckets per unit beyond the precision's range
    tiny = np.finfo(dtype).smallest_subnormal
    keys = np.array([tiny, 0, 2 * tiny, tiny, -1, 3 * tiny, 1], dtype=dtype)
    order, closer = _closer_counts(keys, 0, 3, keys[:3].copy(), scratch)
    assert order.tolist() == [2, 0, 1]
    # 3 tiny and 1 above 2 tiny and tiny (the other tiny ties, so ranks after), all but -1
    # above 0
    assert closer.tolist() == [2, 2, 3]


def test_chunk_size_does_not_change_the_values():
    rng = np.random.default_rng(7)
    tree = _random_tree(rng)
    points, labels = rng.standard_normal((300, 8)).astype(np.float32), rng.integers(0, 9, 300)
    labels = labels % tree.num_classes
    small = hierarchical_ranking_metrics(points, labels, tree, chunk_size=7)
    large = hierarchical_ranking_metrics(points, labels, tree, chunk_size=4096)
    # the same ranks; only the order of summing over queries differs
    assert small == pytest.approx(large, rel=1e-13)


def test_queries_without_relevant_references_are_left_out():
    # b1 is alone in its subtree: its only query has nothing relevant and is not averaged
    points = np.array([[0.0], [1.0], [5.0]])
    values = hierarchical_ranking_metrics(
        points, np.array([0, 1, 2]), HAND_TREE, distance="euclidean", dtype=torch.float64
    )
    assert values == {"h_ap": 1.0, "asi": 1.0, "ndcg": 1.0}
    lonely = hierarchical_ranking_metrics(
        points[2:], np.array([2]), HAND_TREE, points[:2], np.array([0, 1]), "euclidean"
    )
    assert all(math.isnan(v) for v in lonely.values())


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"relevance": "exponential"}, "relevance: expected one of population, level"),
        ({"alpha": 0.0}, "alpha: expected a positive finite number"),
        ({"labels": np.array([0, 3])}, "query_labels: expected labels in [0, 2]"),
    ],
)
def test_bad_input_names_the_culprit(kwargs, message):
    labels = kwargs.pop("labels", np.array([0, 1]))
    with pytest.raises(HierpipeError, match=f"^{message}".replace("[", r"\[")):
        hierarchical_ranking_metrics(np.eye(2), labels, HAND_TREE, **kwargs)
