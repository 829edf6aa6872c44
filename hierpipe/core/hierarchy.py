"""The class tree: root-to-leaf paths, level-j ancestors, lowest common ancestors, tree distance.

Each class (leaf) is described by its root-to-leaf path ``(level-0 ancestor, ..., class name)``;
the root itself is implicit and never stored, as in ProxyDR's class paths (its `*_cls.csv`
files; docs/methods/mds.md). Internal nodes are
identified by their path prefix, so equally named nodes in different branches stay distinct.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from hierpipe.core.errors import HierpipeError

NodePath = tuple[str, ...]


def _show(path: Sequence[str]) -> str:
    return " > ".join(path) if path else "<root>"


class ClassTree:
    """An immutable class tree over class ids ``0..C-1``; build it with ``from_paths``."""

    __slots__ = ("_classes", "_depths", "_paths")

    def __init__(self, paths: Sequence[Sequence[str]]) -> None:
        self._paths = _validated_paths(paths)
        self._classes = tuple(path[-1] for path in self._paths)
        self._depths = np.array([len(path) for path in self._paths], dtype=np.int64)
        self._depths.flags.writeable = False

    @classmethod
    def from_paths(cls, paths: Sequence[Sequence[str]]) -> ClassTree:
        """Build from ``paths[i] = (level-0 ancestor, ..., leaf name)`` of class id ``i``."""
        return cls(paths)

    @classmethod
    def from_parents(cls, parents: Mapping[str, str | None], classes: Sequence[str]) -> ClassTree:
        """Build from child -> parent links (root: parent None) and the leaves in id order."""
        return cls(_parents_to_paths(parents, classes))

    @property
    def classes(self) -> tuple[str, ...]:
        """Class (leaf) names in class-id order."""
        return self._classes

    @property
    def paths(self) -> tuple[NodePath, ...]:
        """Root-to-leaf paths (root excluded) in class-id order."""
        return self._paths

    @property
    def num_classes(self) -> int:
        return len(self._paths)

    @property
    def depths(self) -> np.ndarray:
        """Edges from the root to each class (= path length); read-only int64 array."""
        return self._depths

    @property
    def max_depth(self) -> int:
        return int(self._depths.max())

    def _check_level(self, level: int) -> None:
        if not 0 <= level < self.max_depth:
            raise HierpipeError(
                f"level {level} is outside the tree; expected 0..{self.max_depth - 1}"
            )

    def _level_index(self, level: int) -> tuple[np.ndarray, list[NodePath]]:
        # Slicing a shorter path returns the whole path: a shallow leaf stands for itself.
        index: dict[NodePath, int] = {}
        ids = np.fromiter(
            (index.setdefault(path[: level + 1], len(index)) for path in self._paths),
            dtype=np.int64,
            count=self.num_classes,
        )
        return ids, list(index)

    def level_labels(self, level: int) -> np.ndarray:
        """Dense id of each class's level-``level`` ancestor (level 0 = top-level group).

        A class shallower than ``level`` maps to itself. Ids are numbered in order of first
        appearance over class ids.
        """
        self._check_level(level)
        return self._level_index(level)[0]

    def level_names(self, level: int) -> list[str]:
        """Node name of each id returned by ``level_labels(level)``."""
        self._check_level(level)
        return [path[-1] for path in self._level_index(level)[1]]

    def _check_class(self, class_id: int) -> None:
        if not 0 <= class_id < self.num_classes:
            raise HierpipeError(
                f"class id {class_id} is outside the tree; expected 0..{self.num_classes - 1}"
            )

    def lca(self, a: int, b: int) -> NodePath:
        """Path of the lowest common ancestor of classes ``a`` and ``b`` (``()`` = the root)."""
        self._check_class(a)
        self._check_class(b)
        shared = 0
        for x, y in zip(self._paths[a], self._paths[b], strict=False):
            if x != y:
                break
            shared += 1
        return self._paths[a][:shared]

    def distance_matrix(self) -> np.ndarray:
        """C x C shortest-path distances ``(L_a - k) + (L_b - k)``, k = common-prefix length.

        The dtype is the smallest signed integer that holds ``2 * max_depth``.
        """
        n = self.num_classes
        dtype = np.min_scalar_type(-2 * self.max_depth)
        shared = np.zeros((n, n), dtype=dtype)
        same = np.empty((n, n), dtype=bool)
        for level in range(self.max_depth):
            # Prefix ids encode the whole prefix, so equality at a level implies equality at
            # every level above it and the count of equal levels is the common-prefix length.
            ids = self._level_index(level)[0]
            np.equal(ids[:, None], ids[None, :], out=same)
            shared += same
        # A shallow leaf matched itself at levels below its depth; it shares exactly its path.
        np.fill_diagonal(shared, self._depths)
        depths = self._depths.astype(dtype)
        # Reuse the n x n buffer: for C = 11,000 each one is 121 MB.
        shared *= -2
        shared += depths[:, None]
        shared += depths[None, :]
        return shared

    def require_samples(self, class_counts: Mapping[int, int] | np.ndarray) -> None:
        """Raise naming every class with no samples; counts per class id (array or mapping)."""
        if isinstance(class_counts, Mapping):
            counts = np.zeros(self.num_classes, dtype=np.int64)
            for class_id, count in class_counts.items():
                self._check_class(class_id)
                counts[class_id] = count
        else:
            counts = np.asarray(class_counts)
            if counts.shape != (self.num_classes,):
                raise HierpipeError(
                    f"class counts have shape {counts.shape}; expected ({self.num_classes},)"
                )
        empty = np.flatnonzero(counts <= 0)
        if empty.size:
            listed = ", ".join(f"{i} {self._classes[i]!r}" for i in empty)
            raise HierpipeError(
                f"{empty.size} empty class(es) without samples: {listed}; "
                "every class needs at least one sample"
            )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ClassTree):
            return NotImplemented
        return self._paths == other._paths

    def __hash__(self) -> int:
        return hash(self._paths)

    def __repr__(self) -> str:
        return f"ClassTree({self.num_classes} classes, max depth {self.max_depth})"


def _validated_paths(paths: Sequence[Sequence[str]]) -> tuple[NodePath, ...]:
    result: list[NodePath] = []
    owner_of_leaf: dict[str, int] = {}
    for class_id, raw in enumerate(paths):
        if isinstance(raw, str):
            raise HierpipeError(
                f"class {class_id}: path {raw!r} is a string; expected a sequence of names"
            )
        path = tuple(raw)
        if not path:
            raise HierpipeError(
                f"class {class_id}: empty path; expected (level-0 ancestor, ..., class name)"
            )
        for level, name in enumerate(path):
            if not isinstance(name, str) or not name.strip():
                raise HierpipeError(
                    f"class {class_id} {path!r}: empty name {name!r} at "
                    f"level {level}; expected a non-empty string"
                )
        leaf = path[-1]
        if leaf in owner_of_leaf:
            raise HierpipeError(
                f"duplicate class name {leaf!r}: classes {owner_of_leaf[leaf]} and {class_id}; "
                "class names must be unique"
            )
        owner_of_leaf[leaf] = class_id
        result.append(path)
    if not result:
        raise HierpipeError("a class tree needs at least one class")

    class_below: dict[NodePath, int] = {
        path[:k]: class_id for class_id, path in enumerate(result) for k in range(1, len(path))
    }
    for class_id, path in enumerate(result):
        if path in class_below:
            other = class_below[path]
            raise HierpipeError(
                f"class {class_id} ({_show(path)}) is also an internal node, an ancestor of "
                f"class {other} ({_show(result[other])}); expected every class to be a leaf"
            )
    return tuple(result)


def _parents_to_paths(parents: Mapping[str, str | None], classes: Sequence[str]) -> list[NodePath]:
    unknown = [
        f"{child!r} -> {p!r}" for child, p in parents.items() if p is not None and p not in parents
    ]
    if unknown:
        raise HierpipeError(
            f"unknown parent(s): {', '.join(unknown)}; expected every parent to be a node "
            "(a key of the mapping)"
        )

    # Follow each node's parent chain; nodes already checked end at a None without a cycle.
    checked: set[str] = set()
    for start in parents:
        walk: list[str] = []
        position: dict[str, int] = {}
        node: str | None = start
        while node is not None and node not in checked:
            if node in position:
                cycle = [*walk[position[node] :], node]
                raise HierpipeError(f"cycle in the parent links: {' -> '.join(cycle)}")
            position[node] = len(walk)
            walk.append(node)
            node = parents[node]
        checked.update(walk)

    roots = [node for node, p in parents.items() if p is None]
    if len(roots) != 1:
        found = ", ".join(map(repr, roots)) if roots else "none"
        raise HierpipeError(f"expected exactly one root (parent None); found {found}")
    root = roots[0]

    not_nodes = [name for name in classes if name not in parents]
    if not_nodes:
        raise HierpipeError(f"class(es) {', '.join(map(repr, not_nodes))} are not tree nodes")
    listed = set(classes)
    has_children = {p for p in parents.values() if p is not None}
    internal = [name for name in classes if name in has_children]
    if internal:
        raise HierpipeError(
            f"class(es) {', '.join(map(repr, internal))} have children; expected leaves"
        )
    unlisted = [
        node for node in parents if node not in has_children and node not in listed and node != root
    ]
    if unlisted:
        raise HierpipeError(
            f"leaf node(s) without data: {', '.join(map(repr, unlisted))} are leaves of the "
            "tree but not listed in classes"
        )

    paths = []
    for name in classes:
        path = []
        node = name
        while node != root:
            path.append(node)
            node = parents[node]
        paths.append(tuple(reversed(path)))
    return paths
