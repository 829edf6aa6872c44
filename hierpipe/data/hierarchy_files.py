"""Parsers of the public class-hierarchy files that real datasets take their trees from.

Each returns root-to-leaf paths (root excluded) in class-id order, ready for
`ClassTree.from_paths`; a class the hierarchy does not know, or a malformed line, is an
error naming the file and the line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from hierpipe.core.errors import HierpipeError

# cvjena/semantic-embeddings' CUB files indent each level by two more dashes.
_DASHES_PER_LEVEL = 2


def parse_indented_tree(text: str, source: str) -> dict[str, tuple[str, ...]]:
    """Node name -> path from the root's child down to the node, for a dash-indented tree.

    The first non-blank line is the root (no dashes); every other line is `<2k dashes> name`
    at depth k, below the nearest preceding line at depth k - 1. Names must be unique.
    """
    paths: dict[str, tuple[str, ...]] = {}
    stack: list[str] = []
    root_seen = False
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.rstrip()
        if not line.strip():
            continue
        dashes = len(line) - len(line.lstrip("-"))
        name = line[dashes:].strip()
        where = f"{source}, line {number}"
        if not root_seen:
            if dashes:
                raise HierpipeError(f"{where}: expected the root name without dashes first")
            root_seen = True
            continue
        depth, remainder = divmod(dashes, _DASHES_PER_LEVEL)
        if remainder or depth == 0 or not name:
            raise HierpipeError(f"{where}: expected '<2k dashes> <name>' with k >= 1, got {raw!r}")
        if depth > len(stack) + 1:
            raise HierpipeError(
                f"{where}: {name!r} is at depth {depth} below a node at depth {len(stack)}"
            )
        if name in paths:
            raise HierpipeError(
                f"{where}: node {name!r} appears twice; expected each node once, under one parent"
            )
        stack = [*stack[: depth - 1], name]
        paths[name] = tuple(stack)
    if not paths:
        raise HierpipeError(f"{source}: no nodes below the root")
    return paths


def parse_id_names(text: str, source: str) -> dict[int, str]:
    """`<id> <name, may contain spaces>` per line -> {id: name}; ids unique."""
    names: dict[int, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        key, _, name = raw.strip().partition(" ")
        if not key.isdigit() or not name.strip():
            raise HierpipeError(f"{source}, line {number}: expected '<id> <name>', got {raw!r}")
        if int(key) in names:
            raise HierpipeError(f"{source}, line {number}: id {key} appears twice")
        names[int(key)] = name.strip()
    return names


def class_paths(
    class_names: Sequence[str], node_paths: Mapping[str, tuple[str, ...]], source: str
) -> list[tuple[str, ...]]:
    """The path of each class (by name) in the tree; every class must be a node of it.

    A class may sit above the leaves of the source tree (CUB has four classes named by a
    genus); it must not be an ancestor of another class.
    """
    missing = [name for name in class_names if name not in node_paths]
    if missing:
        shown = ", ".join(map(repr, missing[:10]))
        raise HierpipeError(
            f"{source}: {len(missing)} class(es) are not nodes of the hierarchy: {shown}"
        )
    return [node_paths[name] for name in class_names]


# ProxyDR's `*_cls.csv` hierarchy files (e.g. CIFAR100_cls.csv).
_PATH_CSV_HEADER = ("Class", "Path", "Number")


def parse_path_csv(text: str, source: str) -> dict[str, tuple[str, ...]]:
    """Class name -> path from the top level down to the class, for ProxyDR's `*_cls.csv`.

    The header is `Class,Path,Number`; each row's Path joins the root-to-leaf node names
    (root excluded) with `/` and ends in the row's Class; Number is the class index. Names
    hold no commas or quotes in these files, so a row is split on commas and a quoted field
    is refused rather than guessed at. Class names must be unique.
    """
    paths: dict[str, tuple[str, ...]] = {}
    header_seen = False
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        fields = tuple(field.strip() for field in raw.split(","))
        where = f"{source}, line {number}"
        if not header_seen:
            # a UTF-8 byte-order mark, as spreadsheet programs write one, is not part of the name
            if (fields[0].lstrip("\ufeff"), *fields[1:]) != _PATH_CSV_HEADER:
                raise HierpipeError(
                    f"{where}: expected the header {','.join(_PATH_CSV_HEADER)!r}, got {raw!r}"
                )
            header_seen = True
            continue
        if len(fields) != len(_PATH_CSV_HEADER) or not fields[2].isdigit() or '"' in raw:
            raise HierpipeError(
                f"{where}: expected '<class>,<a/b/.../class>,<number>' unquoted, got {raw!r}"
            )
        name, path = fields[0], tuple(part.strip() for part in fields[1].split("/"))
        if not name or not all(path):
            raise HierpipeError(f"{where}: empty class or node name in {raw!r}")
        if path[-1] != name:
            raise HierpipeError(f"{where}: path {fields[1]!r} does not end in its class {name!r}")
        if name in paths:
            raise HierpipeError(f"{where}: class {name!r} appears twice")
        paths[name] = path
    if not paths:
        raise HierpipeError(f"{source}: no classes below the header")
    return paths
