"""What every figure shares: a headless canvas, deterministic PNG + PDF files, the colours
and legend of the true tree's top-level groups, and the check of a class-by-class matrix.

Figures are built on `matplotlib.figure.Figure` directly, never through pyplot, so no global
state leaks between figures and the Agg canvas is used whatever the user's backend is.
"""

from __future__ import annotations

from operator import itemgetter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: no display, same pixels everywhere

import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Patch

from hierpipe.core.atomic import atomic_path
from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree
from hierpipe.core.validation import check_finite_array
from hierpipe.reporting.plots.plan import FORMATS

DPI = 100
# Beyond this many top-level groups a legend is a wall of near-identical colours.
MAX_LEGEND_GROUPS = 20
# No timestamps or version strings in the files: the same inputs give the same bytes.
_METADATA = {
    "png": {"Software": None},
    "pdf": {"Creator": None, "Producer": None, "CreationDate": None},
}


def new_figure(width: float, height: float, *, constrained: bool = True) -> Figure:
    """A blank figure of `width` x `height` inches (100 px per inch in the PNG), laid out by
    matplotlib's constrained layout unless the caller places every axes itself."""
    return Figure(figsize=(width, height), dpi=DPI, layout="constrained" if constrained else None)


def save_figure(figure: Figure, stem: str | Path) -> list[Path]:
    """Write `<stem>.png` and `<stem>.pdf`, each atomically; returns their paths.

    The layout is solved once, for the first file, and then frozen (the figure keeps it), so
    both files have the same layout and the second save skips the solver (a third of its
    time).
    """
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    written = []
    for extension in FORMATS:
        path = stem.with_name(f"{stem.name}.{extension}")
        with atomic_path(path) as partial:
            figure.savefig(partial, format=extension, dpi=DPI, metadata=_METADATA[extension])
        figure.set_layout_engine("none")
        written.append(path)
    return written


def superclass_colours(tree: ClassTree) -> tuple[np.ndarray, list[tuple[str, np.ndarray]]]:
    """RGBA colour of each class (by its top-level ancestor), and (name, colour) per group."""
    groups = tree.level_labels(0) if tree.max_depth > 1 else np.arange(tree.num_classes)
    names = tree.level_names(0) if tree.max_depth > 1 else list(tree.classes)
    palette = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    colours = np.array([palette(i % palette.N) for i in range(len(names))])
    return colours[groups], list(zip(names, colours, strict=True))


def tree_leaf_order(tree: ClassTree) -> np.ndarray:
    """Class ids in depth-first order of the true tree (siblings by name), for orderings."""
    return np.array(sorted(range(tree.num_classes), key=lambda i: tree.paths[i]), dtype=np.int64)


def group_legend_handles(tree: ClassTree) -> list[Patch]:
    """A coloured patch per top-level group of ``tree``, by name; none beyond MAX_LEGEND_GROUPS."""
    _, groups = superclass_colours(tree)
    if len(groups) > MAX_LEGEND_GROUPS:
        return []
    # By name, the order in which tree_leaf_order lays the groups out in the figures.
    return [
        Patch(facecolor=colour, label=name) for name, colour in sorted(groups, key=itemgetter(0))
    ]


def add_group_legend(figure: Figure, tree: ClassTree) -> None:
    """The top-level groups' colours as one legend below the figure's panels."""
    handles = group_legend_handles(tree)
    if handles:
        figure.legend(
            handles=handles,
            loc="outside lower center",
            ncols=min(len(handles), 6),
            frameon=False,
            fontsize="small",
        )


def class_matrix(name: str, matrix: object, tree: ClassTree) -> np.ndarray:
    """``matrix`` as a finite float64 (C, C) array over the tree's class ids; ``name`` in errors."""
    m = check_finite_array(name, "(C, C)", matrix)
    c = tree.num_classes
    if m.shape != (c, c):
        raise HierpipeError(
            f"{name}: expected a ({c}, {c}) matrix, one row and column per class of the tree, "
            f"got shape {m.shape}"
        )
    return m
