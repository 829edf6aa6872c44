"""The true class tree next to the tree a model's class distances give, as two dendrograms.

Both trees are built by params' `evaluate.tree_linkage` (WPGMA or UPGMA), the construction
behind the Robinson-Foulds distance of ``hierpipe.evaluation.metrics.robinson_foulds``, so the
right-hand tree is the tree that measure scored. Either linkage of the tree distance matrix
reproduces the true tree, its multifurcations drawn as merges at tied heights.
"""

from __future__ import annotations

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from scipy.cluster.hierarchy import dendrogram

from hierpipe.core.errors import HierpipeError
from hierpipe.core.hierarchy import ClassTree
from hierpipe.evaluation.metrics.hierarchy import tree_merges
from hierpipe.reporting.plots.canvas import (
    add_group_legend,
    class_matrix,
    new_figure,
    superclass_colours,
)

# Above this many classes the leaf names no longer fit; a strip of group colours replaces them.
MAX_LABELLED_CLASSES = 60
_INCHES_PER_LABEL = 0.16
_LINK_COLOUR = "0.25"


def _draw_tree(
    ax: Axes, distances: np.ndarray, tree: ClassTree, colours: np.ndarray, linkage_name: str
) -> None:
    """The dendrogram that ``linkage_name`` builds on (C, C) ``distances``, leaves coloured
    by ``colours`` (C, 4)."""
    # the very merges robinson_foulds scores (the upper triangle of an almost symmetric matrix)
    merges = tree_merges(distances, linkage_name)
    labelled = tree.num_classes <= MAX_LABELLED_CLASSES
    drawn = dendrogram(
        merges,
        ax=ax,
        orientation="left",
        labels=list(tree.classes) if labelled else None,
        no_labels=not labelled,
        leaf_font_size=8,
        # One colour for every link: colour is reserved for the groups of the leaves.
        link_color_func=lambda _: _LINK_COLOUR,
    )
    leaves = np.asarray(drawn["leaves"])
    if labelled:
        for label, leaf in zip(ax.get_yticklabels(), leaves, strict=True):
            label.set_color(colours[leaf])
    else:
        # With orientation "left" the leaves sit at the right edge, bottom to top.
        strip = ax.inset_axes((1.01, 0.0, 0.03, 1.0))
        strip.imshow(colours[leaves][:, None], origin="lower", aspect="auto")
        strip.set_axis_off()
    ax.set_xlabel(f"{linkage_name.upper()} merge height")
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)


def draw_tree_comparison(
    distances: np.ndarray, tree: ClassTree, *, title: str, linkage_name: str = "wpgma"
) -> Figure:
    """Dendrograms that ``linkage_name`` (TREE_LINKAGES) builds on the true ``tree``'s
    distances (left) and on ``distances`` (C, C) (right).

    Leaves are the class names coloured by their top-level group, or for more than
    MAX_LABELLED_CLASSES classes a strip of those colours; one legend of the groups (none
    beyond 20 groups). ``title`` is the caller's, e.g. with the RF and Spearman values.
    Only the upper triangle of ``distances`` is read.
    """
    learned = class_matrix("distances", distances, tree)
    if tree.num_classes < 2:
        raise HierpipeError(f"tree: a dendrogram needs at least 2 classes, got {tree.num_classes}")
    colours, _ = superclass_colours(tree)
    height = max(4.5, _INCHES_PER_LABEL * min(tree.num_classes, MAX_LABELLED_CLASSES) + 2.0)
    figure = new_figure(11.0, height)
    true_ax, learned_ax = figure.subplots(1, 2)
    true_distances = tree.distance_matrix().astype(np.float64)
    _draw_tree(true_ax, true_distances, tree, colours, linkage_name)
    true_ax.set_title("true tree")
    _draw_tree(learned_ax, learned, tree, colours, linkage_name)
    learned_ax.set_title(f"learned ({linkage_name.upper()} of class distances)")

    add_group_legend(figure, tree)
    figure.suptitle(title)
    return figure
