"""2-D maps of an embedding: samples, class representatives and hierarchical proxies together.

Euclidean and spherical embeddings are laid out by one UMAP fitted on all the points, so
samples, representatives and proxies share a map. Poincaré embeddings keep the ball's own
geometry instead (``project_ball_to_disk``): the distance to the origin is what orders HIER's
proxies from the root to the leaves, and a UMAP layout would discard it.
"""

from __future__ import annotations

import functools
import sys
from types import ModuleType
from typing import TYPE_CHECKING

import numpy as np
import torch
from matplotlib.artist import Artist
from matplotlib.axes import Axes
from matplotlib.collections import LineCollection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Circle

from hierpipe.core.errors import HierpipeError
from hierpipe.core.geometry import check_metric, poincare_ball, poincare_cdist
from hierpipe.core.hierarchy import ClassTree
from hierpipe.core.validation import check_in_ball, check_int, check_points, class_labels
from hierpipe.evaluation.metrics.induced_tree import depths_from_origin, nearest_shallower
from hierpipe.reporting.plots.canvas import group_legend_handles, new_figure, superclass_colours

if TYPE_CHECKING:  # imported for real, on first use, by hierpipe.core.geometry, warning silenced
    import geoopt

SPACES = ("euclidean", "sphere", "poincare")
_UMAP_METRIC = {"euclidean": "euclidean", "sphere": "cosine"}
# UMAP's spectral initialisation needs more points than its 3 eigenvectors (2 + 1).
_MIN_UMAP_POINTS = 4
# Samples linked to their proxy: more lines than this hide the points they connect.
MAX_LINKED_SAMPLES = 300


def _tangent_at_origin(ball: geoopt.PoincareBall, points: np.ndarray) -> np.ndarray:
    # As in hierpipe.core.geometry: geoopt's TorchScript maps round differently once the JIT has
    # optimised them, and the figure must not depend on how many calls came before.
    with torch.jit.optimized_execution(False):
        return ball.logmap0(torch.from_numpy(points)).numpy()


def _principal_plane(tangent: np.ndarray) -> np.ndarray:
    """Up to two orthonormal rows spanning the best plane through the origin (no centring)."""
    _, _, rows = np.linalg.svd(tangent, full_matrices=False)
    rows = rows[:2]
    # Singular vectors are defined up to sign; fixing it keeps the map from mirroring
    # between LAPACK builds.
    largest = np.abs(rows).argmax(axis=1)
    return rows * np.sign(rows[np.arange(len(rows)), largest])[:, None]


def project_ball_to_disk(points: np.ndarray, curvature: float, fit_on: np.ndarray) -> np.ndarray:
    """Points (n, D) of the Poincaré ball of ``curvature`` as points (n, 2) of its 2-D disk.

    Every point is taken to the tangent space at the origin (log map), projected onto the
    plane of the first two principal axes of the tangent vectors of ``fit_on`` (m, D),
    without centring so that the origin stays the origin, and brought back with the 2-D
    exponential map of the same curvature. The orthogonal projection shrinks tangent norms,
    never grows them, and the distance to the origin grows with the tangent norm, so every
    point is at most as far from the origin as it was, exactly as far if it lies in the
    plane; the results lie inside the disk of radius ``1/sqrt(curvature)``. With fewer than
    two axes (D = 1, or one row in ``fit_on``) the second coordinate is 0.
    """
    ball = poincare_ball(curvature)
    x = check_points("points", "(n, D)", points)
    fit = check_points("fit_on", "(m, D)", fit_on)
    if fit.shape[1] != x.shape[1]:
        raise HierpipeError(
            f"fit_on: expected dimension D = {x.shape[1]} as points, got {fit.shape[1]}"
        )
    check_in_ball("points", x, curvature)
    check_in_ball("fit_on", fit, curvature)
    plane = _principal_plane(_tangent_at_origin(ball, fit))
    coordinates = np.zeros((len(x), 2))
    coordinates[:, : len(plane)] = _tangent_at_origin(ball, x) @ plane.T
    with torch.jit.optimized_execution(False):
        return ball.expmap0(torch.from_numpy(coordinates)).numpy()


@functools.cache
def _umap() -> ModuleType:
    """umap-learn, its numba kernels cached on disk as hierpipe's own are.

    umap-learn and pynndescent do not ask numba to cache their kernels, so every process
    compiled them afresh: about 10 s of each figures job. numba's cache keeps the compiled
    code, keyed by the kernel's source and argument types, so the layouts are the same bit for
    bit; it lies beside their sources, or in the user's cache when those are read-only.
    """
    # Imported here: umap-learn takes about 2 s to import (numba), which every other user of
    # the figures would pay.
    import umap
    from numba.core.registry import CPUDispatcher

    for name, module in list(sys.modules.items()):
        if module is not None and name.split(".")[0] in ("umap", "pynndescent"):
            for kernel in vars(module).values():
                if isinstance(kernel, CPUDispatcher):
                    kernel.enable_caching()
    return umap


def _umap_layout(points: np.ndarray, space: str, seed: int) -> np.ndarray:
    reducer = _umap().UMAP(
        n_components=2,
        n_neighbors=min(15, len(points) - 1),
        metric=_UMAP_METRIC[space],
        # well-trained classes collapse into tight clusters; a larger minimum distance keeps
        # their samples apart enough to be seen (UMAP's default is 0.1)
        min_dist=0.5,
        random_state=seed,
        # random_state already forces one thread; saying so avoids UMAP's warning about it.
        n_jobs=1,
    )
    return reducer.fit_transform(points)


def _check_space(space: str, curvature: float | None) -> None:
    if space not in SPACES:
        raise HierpipeError(f"space: unknown {space!r}, expected one of {', '.join(SPACES)}")
    if space == "poincare":
        check_metric("poincare", curvature, name="space")
    elif curvature is not None:
        raise HierpipeError(
            f"curvature: only applies to space 'poincare', got {curvature!r} with {space!r}"
        )


def _labelled_points(
    name: str, points: object, labels_name: str, labels: object, tree: ClassTree
) -> tuple[np.ndarray, np.ndarray]:
    """Validated (n, D) points and their (n,) class ids in the tree."""
    x = check_points(name, "(n, D)", points)
    ids = class_labels(labels_name, labels, tree.num_classes)
    if len(ids) != len(x):
        raise HierpipeError(
            f"{labels_name}: expected one class id per row of {name} ({len(x)}), got {len(ids)}"
        )
    return x, ids


def _check_dimension(name: str, points: np.ndarray, dimension: int) -> None:
    if points.shape[1] != dimension:
        raise HierpipeError(
            f"{name}: expected dimension D = {dimension} as samples, got {points.shape[1]}"
        )


def _proxy_links(
    children: np.ndarray, proxies: np.ndarray, curvature: float
) -> tuple[np.ndarray, np.ndarray]:
    """(child rows, proxy rows) of each child's nearest strictly shallower proxy, if any.

    Depth is the Poincaré distance to the origin in the full ball, the rule of
    ``hierpipe.evaluation.metrics.induced_tree``; a proxy among the children never links to itself.
    """
    x, p = torch.from_numpy(children), torch.from_numpy(proxies)
    parent = nearest_shallower(
        poincare_cdist(x, p, curvature).numpy(),
        depths_from_origin(x, "poincare", curvature),
        depths_from_origin(p, "poincare", curvature),
    )
    linked = np.flatnonzero(parent >= 0)
    return linked, parent[linked]


def _draw_disk(ax: Axes, curvature: float) -> None:
    radius = curvature**-0.5
    ax.add_patch(Circle((0.0, 0.0), radius, fill=False, edgecolor="0.3", linewidth=1.0))
    limit = 1.03 * radius
    ax.set_xlim(-limit, limit)
    ax.set_ylim(-limit, limit)
    ax.set_aspect("equal")


def _checked_inputs(
    samples: object,
    sample_classes: object,
    representatives: object,
    representative_classes: object,
    hier_proxies: object | None,
    tree: ClassTree,
    curvature: float | None,
) -> tuple[np.ndarray, ...]:
    """Validated samples, their classes, representatives, theirs, and proxies ((0, D) if None)."""
    samples, sample_classes = _labelled_points(
        "samples", samples, "sample_classes", sample_classes, tree
    )
    representatives, representative_classes = _labelled_points(
        "representatives", representatives, "representative_classes", representative_classes, tree
    )
    dimension = samples.shape[1]
    _check_dimension("representatives", representatives, dimension)
    if hier_proxies is None:
        proxies = np.empty((0, dimension))
    else:
        proxies = check_points("hier_proxies", "(M, D)", hier_proxies)
        _check_dimension("hier_proxies", proxies, dimension)
    if curvature is not None:
        # Checked here, not only by the projection, so that the error names the input.
        for name, x in (
            ("samples", samples),
            ("representatives", representatives),
            ("hier_proxies", proxies),
        ):
            check_in_ball(name, x, curvature)
    return samples, sample_classes, representatives, representative_classes, proxies


def _layout(
    points: np.ndarray, samples: np.ndarray, space: str, curvature: float | None, seed: int
) -> np.ndarray:
    """2-D positions (n, 2) of ``points``, which include the ``samples`` that fit the map."""
    if space == "poincare":
        return project_ball_to_disk(points, curvature, fit_on=samples)
    if len(points) < _MIN_UMAP_POINTS:
        raise HierpipeError(
            f"samples, representatives and hier_proxies: UMAP needs at least "
            f"{_MIN_UMAP_POINTS} points in all, got {len(points)}"
        )
    return _umap_layout(points, space, seed)


def _legend_handles(tree: ClassTree, with_proxies: bool) -> list[Artist]:
    representative = Line2D(
        [],
        [],
        linestyle="none",
        marker="o",
        markersize=8,
        markerfacecolor="0.75",
        markeredgecolor="black",
        label="class representative",
    )
    proxy = Line2D([], [], linestyle="none", marker="x", color="black", label="hierarchical proxy")
    return [*group_legend_handles(tree), representative, *([proxy] if with_proxies else [])]


def draw_embedding_map(
    samples: np.ndarray,
    sample_classes: np.ndarray,
    representatives: np.ndarray,
    representative_classes: np.ndarray,
    tree: ClassTree,
    *,
    space: str,
    curvature: float | None = None,
    hier_proxies: np.ndarray | None = None,
    title: str,
    seed: int = 0,
    max_points: int = 2000,
) -> Figure:
    """A 2-D map of samples (N, D), class representatives (C', D) and HIER proxies (M, D).

    ``space`` is ``euclidean`` or ``sphere`` (one UMAP of all points with ``random_state =
    seed``, euclidean or cosine metric) or ``poincare`` (``project_ball_to_disk`` fitted on
    the drawn samples, with ``curvature`` required, drawn in the disk with each proxy, each
    representative and up to MAX_LINKED_SAMPLES samples linked to its nearest strictly
    shallower proxy). At most ``max_points`` samples are drawn, a random subset by ``seed``.
    Samples and representatives are coloured by their class's top-level group; proxies are
    black crosses.
    """
    _check_space(space, curvature)
    max_points = check_int("max_points", max_points, 1)
    if isinstance(seed, bool) or not isinstance(seed, int | np.integer) or seed < 0:
        raise HierpipeError(f"seed: expected an integer >= 0, got {seed!r}")
    samples, sample_classes, representatives, representative_classes, proxies = _checked_inputs(
        samples,
        sample_classes,
        representatives,
        representative_classes,
        hier_proxies,
        tree,
        curvature,
    )
    # A permutation rather than a sorted subset, so that the drawing order is random too
    # and no class is systematically painted over the others.
    keep = np.random.default_rng(seed).permutation(len(samples))[:max_points]
    samples, sample_classes = samples[keep], sample_classes[keep]
    xy = _layout(
        np.concatenate([samples, representatives, proxies]), samples, space, curvature, seed
    )
    sample_xy, representative_xy, proxy_xy = np.split(
        xy, np.cumsum([len(samples), len(representatives)])
    )

    figure = new_figure(8.5, 6.5)
    ax = figure.add_subplot()
    if space == "poincare":
        _draw_disk(ax, curvature)
        if len(proxies):
            # The first samples of the permutation are a random subset of the drawn ones.
            children = np.concatenate([proxies, representatives, samples[:MAX_LINKED_SAMPLES]])
            children_xy = np.concatenate(
                [proxy_xy, representative_xy, sample_xy[:MAX_LINKED_SAMPLES]]
            )
            child, parent = _proxy_links(children, proxies, curvature)
            segments = np.stack([children_xy[child], proxy_xy[parent]], axis=1)
            ax.add_collection(
                LineCollection(segments, colors="0.4", linewidths=0.5, alpha=0.35, zorder=1)
            )

    colours, _ = superclass_colours(tree)
    # representatives translucent and under the samples: a class's samples often sit on it
    fill = colours[representative_classes].copy()
    fill[:, 3] = 0.35
    ax.scatter(*representative_xy.T, s=90, c=fill, edgecolors="black", linewidths=0.8, zorder=2)
    ax.scatter(*sample_xy.T, s=6, c=colours[sample_classes], linewidths=0, alpha=0.8, zorder=3)
    ax.scatter(*proxy_xy.T, s=40, marker="x", c="black", linewidths=1.2, zorder=4)
    ax.set_xticks([])
    ax.set_yticks([])
    figure.legend(
        handles=_legend_handles(tree, with_proxies=len(proxies) > 0),
        loc="outside right center",
        frameon=False,
        fontsize="small",
    )
    figure.suptitle(title)
    return figure
