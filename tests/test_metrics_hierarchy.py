import math

import numpy as np
import pytest
from scipy import stats

from hierpipe.errors import HierpipeError
from hierpipe.metrics import (
    average_hierarchical_cost,
    classwise_spearman,
    elementwise_spearman,
)

# Two top-level groups of four leaves each: siblings at distance 2, cousins at distance 4.
GROUPS = np.array([0, 0, 0, 0, 1, 1, 1, 1])
TREE = np.where(GROUPS[:, None] == GROUPS[None, :], 2.0, 4.0)
np.fill_diagonal(TREE, 0.0)


def _random_rep_dist(n: int, seed: int) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, 5))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return np.sqrt(np.clip(2 - 2 * v @ v.T, 0, None))


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
