"""ClassTree: paths, parents, levels, LCA and tree distance against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import nodes_per_level
from hypothesis import given, settings
from hypothesis import strategies as st

from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree

# root
# ├── animal ── mammal ── cat, dog
# │          └─ bird
# ├── plant ── tree ── oak
# │         └─ rose
# └── fungus
PATHS = [
    ("animal", "mammal", "cat"),
    ("animal", "mammal", "dog"),
    ("animal", "bird"),
    ("plant", "tree", "oak"),
    ("plant", "rose"),
    ("fungus",),
]
PARENTS = {
    "root": None,
    "animal": "root",
    "mammal": "animal",
    "cat": "mammal",
    "dog": "mammal",
    "bird": "animal",
    "plant": "root",
    "tree": "plant",
    "oak": "tree",
    "rose": "plant",
    "fungus": "root",
}
CLASSES = ["cat", "dog", "bird", "oak", "rose", "fungus"]
#            cat dog bird oak rose fungus
DISTANCES = [
    [0, 2, 3, 6, 5, 4],
    [2, 0, 3, 6, 5, 4],
    [3, 3, 0, 5, 4, 3],
    [6, 6, 5, 0, 3, 4],
    [5, 5, 4, 3, 0, 3],
    [4, 4, 3, 4, 3, 0],
]


@pytest.fixture
def tree() -> ClassTree:
    return ClassTree.from_paths(PATHS)


def test_basic_properties(tree: ClassTree) -> None:
    assert tree.classes == tuple(CLASSES)
    assert tree.paths == tuple(PATHS)
    assert tree.num_classes == 6
    assert tree.depths.tolist() == [3, 3, 2, 3, 2, 1]
    assert tree.max_depth == 3


def test_distance_matrix_by_hand(tree: ClassTree) -> None:
    distances = tree.distance_matrix()
    assert distances.dtype == np.int8
    np.testing.assert_array_equal(distances, DISTANCES)


def test_lca(tree: ClassTree) -> None:
    assert tree.lca(0, 1) == ("animal", "mammal")
    assert tree.lca(0, 2) == ("animal",)
    assert tree.lca(3, 4) == ("plant",)
    assert tree.lca(0, 3) == ()
    assert tree.lca(5, 5) == ("fungus",)
    assert tree.lca(2, 2) == ("animal", "bird")
    with pytest.raises(HierpipeError, match=r"class id 6"):
        tree.lca(0, 6)


def test_level_labels_and_names(tree: ClassTree) -> None:
    assert tree.level_labels(0).tolist() == [0, 0, 0, 1, 1, 2]
    assert tree.level_names(0) == ["animal", "plant", "fungus"]
    # bird, rose and fungus are shallower than level 2 (fungus than level 1): they map to
    # themselves, as ProxyDR's level-j ancestor mapping does
    # (docs/methods/classification_measures.md).
    assert tree.level_labels(1).tolist() == [0, 0, 1, 2, 3, 4]
    assert tree.level_names(1) == ["mammal", "bird", "tree", "rose", "fungus"]
    assert tree.level_labels(2).tolist() == [0, 1, 2, 3, 4, 5]
    assert tree.level_names(2) == CLASSES
    assert tree.level_labels(0).dtype == np.int64
    assert nodes_per_level(tree) == [3, 5, 6]
    for level in (-1, 3):
        with pytest.raises(HierpipeError, match=f"level {level}"):
            tree.level_labels(level)


def test_internal_nodes_are_identified_by_prefix() -> None:
    tree = ClassTree.from_paths([("a", "small", "x"), ("b", "small", "y"), ("a", "small", "z")])
    assert tree.level_labels(1).tolist() == [0, 1, 0]
    assert tree.level_names(1) == ["small", "small"]
    np.testing.assert_array_equal(tree.distance_matrix(), [[0, 6, 2], [6, 0, 6], [2, 6, 0]])


def test_from_parents_equals_from_paths(tree: ClassTree) -> None:
    from_parents = ClassTree.from_parents(PARENTS, CLASSES)
    assert from_parents == tree
    assert hash(from_parents) == hash(tree)
    assert ClassTree.from_parents(PARENTS, CLASSES[::-1]) != tree


@pytest.mark.parametrize(
    ("paths", "message"),
    [
        ([], "at least one class"),
        ([("a", "x"), ()], "class 1: empty path"),
        ([("a", "")], "class 0.*empty name '' at level 1"),
        ([("  ", "x")], "class 0.*empty name"),
        (["a/x"], "class 0: path 'a/x' is a string"),
        ([("a", "x"), ("b", "x")], "duplicate class name 'x': classes 0 and 1"),
        ([("a", "b"), ("a", "b", "c")], r"class 0 \(a > b\) is also an internal node.*class 1"),
    ],
)
def test_from_paths_errors(paths: list, message: str) -> None:
    with pytest.raises(HierpipeError, match=message):
        ClassTree.from_paths(paths)


@pytest.mark.parametrize(
    ("parents", "classes", "message"),
    [
        ({"r": None, "a": "r", "x": "zz"}, ["a", "x"], "unknown parent.*'x' -> 'zz'"),
        ({"r": None, "a": "b", "b": "c", "c": "a", "x": "r"}, ["x"], "cycle.*a -> b -> c -> a"),
        ({"r": None, "a": "a", "x": "r"}, ["x"], "cycle.*a -> a"),
        ({}, [], "exactly one root.*found none"),
        ({"r": None, "s": None}, ["r", "s"], "exactly one root.*found 'r', 's'"),
        ({"r": None, "a": "r"}, ["a", "b"], "'b' are not tree nodes"),
        ({"r": None, "a": "r", "x": "a"}, ["a", "x"], "'a' have children"),
        ({"r": None, "a": "r", "x": "a", "y": "a"}, ["x"], "without data: 'y'"),
        ({"r": None, "a": "r", "x": "r"}, ["a", "x", "a"], "duplicate class name 'a'"),
    ],
)
def test_from_parents_errors(parents: dict, classes: list, message: str) -> None:
    with pytest.raises(HierpipeError, match=message):
        ClassTree.from_parents(parents, classes)


def test_require_samples(tree: ClassTree) -> None:
    tree.require_samples(np.array([1, 2, 3, 4, 5, 6]))
    with pytest.raises(HierpipeError, match=r"2 empty class.*1 'dog', 4 'rose'"):
        tree.require_samples(np.array([3, 0, 1, 1, 0, 2]))
    with pytest.raises(HierpipeError, match=r"5 empty class.*0 'cat'.*5 'fungus'"):
        tree.require_samples({2: 7})
    with pytest.raises(HierpipeError, match=r"shape"):
        tree.require_samples(np.ones(5))


def _naive_distances(paths: list[tuple[str, ...]]) -> np.ndarray:
    n = len(paths)
    result = np.zeros((n, n), dtype=int)
    for i, p in enumerate(paths):
        for j, q in enumerate(paths):
            k = 0
            while k < min(len(p), len(q)) and p[k] == q[k]:
                k += 1
            result[i, j] = len(p) - k + len(q) - k
    return result


# Internal names from a tiny alphabet, so that branches share prefixes often; leaves unique.
random_paths = st.lists(
    st.lists(st.sampled_from("abc"), min_size=0, max_size=4), min_size=1, max_size=14
).map(lambda prefixes: [(*prefix, f"leaf{i}") for i, prefix in enumerate(prefixes)])


@settings(max_examples=150, deadline=None)
@given(random_paths)
def test_distance_matrix_properties(paths: list[tuple[str, ...]]) -> None:
    tree = ClassTree.from_paths(paths)
    distances = tree.distance_matrix().astype(int)
    np.testing.assert_array_equal(distances, _naive_distances(paths))
    np.testing.assert_array_equal(distances, distances.T)
    assert (np.diag(distances) == 0).all()
    assert (distances[~np.eye(len(paths), dtype=bool)] > 0).all()
    # d(i, j) <= d(i, k) + d(k, j) for all i, j, k
    assert (distances[:, None, :] <= distances[:, :, None] + distances[None, :, :]).all()
    for a in range(len(paths)):
        for b in range(len(paths)):
            shared = len(tree.lca(a, b))
            assert distances[a, b] == len(paths[a]) + len(paths[b]) - 2 * shared


def test_two_thousand_classes() -> None:
    rng = np.random.default_rng(0)
    paths = [
        (*(f"g{level}{rng.integers(3)}" for level in range(rng.integers(0, 6))), f"c{i}")
        for i in range(2000)
    ]
    distances = ClassTree.from_paths(paths).distance_matrix()
    assert distances.shape == (2000, 2000)
    assert distances.dtype == np.int8
    rows = rng.choice(2000, 40, replace=False)
    sample = [paths[i] for i in rows]
    np.testing.assert_array_equal(distances[np.ix_(rows, rows)], _naive_distances(sample))
