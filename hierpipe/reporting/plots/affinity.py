"""Class-by-class affinity matrices (the true tree's and the learned ones) in the tree's order.

Each panel shows affinity = -distance over the classes, rows and columns in the depth-first
order of the true tree, so a model that learned the hierarchy shows the tree's nested blocks
on the diagonal. Every panel has its own colour scale: distances of different models and
geometries are not comparable in value, only in pattern.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree
from hierpipe.reporting.plots.canvas import (
    add_group_legend,
    class_matrix,
    new_figure,
    superclass_colours,
    tree_leaf_order,
)

PANELS_PER_ROW = 4
_PANEL_INCHES = 3.6
# Group strips beside each matrix, as fractions of the matrix's side.
_STRIP_WIDTH = 0.04
_STRIP_GAP = 0.015


def _group_strips(ax: Axes, strip: np.ndarray) -> None:
    """Group colours (C, 4) in display order as strips left of and above the matrix in ``ax``."""
    # Inset axes are placed in the matrix's own coordinates, so they stay aligned with it
    # whatever size the layout gives the matrix.
    offset = _STRIP_GAP + _STRIP_WIDTH
    left = ax.inset_axes((-offset, 0.0, _STRIP_WIDTH, 1.0))
    left.imshow(strip[:, None], aspect="auto", interpolation="nearest")
    top = ax.inset_axes((0.0, 1.0 + _STRIP_GAP, 1.0, _STRIP_WIDTH))
    top.imshow(strip[None, :], aspect="auto", interpolation="nearest")
    for strip_ax in (left, top):
        strip_ax.set_axis_off()


def draw_affinity_matrices(
    panels: Sequence[tuple[str, np.ndarray]], tree: ClassTree, *, title: str
) -> Figure:
    """One panel per (panel title, (C, C) distance matrix over the tree's class ids).

    Panels sit side by side, at most PANELS_PER_ROW to a row, each with its own viridis
    scale and strips of the classes' top-level group colours on the left and on top; one
    legend of the groups (canvas.add_group_legend) is shared by all panels.
    """
    panels = list(panels)
    if not panels:
        raise HierpipeError("panels: expected at least one (title, matrix) panel, got none")
    matrices = [
        class_matrix(f"panel {i} {name!r}", matrix, tree) for i, (name, matrix) in enumerate(panels)
    ]
    order = tree_leaf_order(tree)
    colours, _ = superclass_colours(tree)
    strip = colours[order]

    columns = min(len(panels), PANELS_PER_ROW)
    rows = math.ceil(len(panels) / PANELS_PER_ROW)
    figure = new_figure(_PANEL_INCHES * columns + 0.5, _PANEL_INCHES * rows + 1.2)
    grid = figure.add_gridspec(rows, columns)
    for i, ((name, _), matrix) in enumerate(zip(panels, matrices, strict=True)):
        ax = figure.add_subplot(grid[divmod(i, columns)])
        image = ax.imshow(-matrix[np.ix_(order, order)], cmap="viridis")
        ax.set_xticks([])
        ax.set_yticks([])
        # The default pad would put the panel title on the top strip.
        ax.set_title(name, fontsize="medium", pad=16)
        _group_strips(ax, strip)
        figure.colorbar(image, ax=ax, shrink=0.8, label="affinity (-distance)")

    add_group_legend(figure, tree)
    figure.suptitle(title)
    return figure
