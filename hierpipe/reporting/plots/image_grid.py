"""Grids of image thumbnails, one labelled row per entry, and the two ways the figures pick
what goes in them: the hierarchical proxies nearest the Poincaré boundary with their nearest
samples, and retrieval queries with their nearest neighbours.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from PIL import Image, ImageOps

from hierpipe.core.errors import HierpipeError
from hierpipe.core.geometry import check_metric
from hierpipe.core.validation import check_in_ball, check_int, check_points, class_labels
from hierpipe.evaluation.metrics import nearest_neighbours
from hierpipe.reporting.plots.canvas import new_figure

# Border colour of a tile whose retrieval was right / wrong (matplotlib's tab green / red).
BORDER_COLOURS = {True: "#2ca02c", False: "#d62728"}
_BORDER_WIDTH = 4.0  # points: thick enough to read at thumbnail size
_LABEL_WIDTH = 1.4  # inches for the row labels
_CAPTION_HEIGHT = 0.35  # inches under a tile: two lines of small text
_TILE_GAP = 0.15  # inches between tiles
_TITLE_HEIGHT = 0.5  # inches
_TITLE_PAD = 0.1  # inches above the title


@dataclass(frozen=True)
class Tile:
    """One thumbnail: ``correct`` True / False draws a green / red border, None none."""

    path: Path
    caption: str = ""
    correct: bool | None = None


def _thumbnail(path: Path, size: int) -> np.ndarray:
    """The image at ``path`` as RGB, fitted into size x size keeping its aspect, padded white."""
    try:
        with Image.open(path) as image:
            rgb = image.convert("RGB")  # decodes now, so a truncated file fails here
    except FileNotFoundError:
        raise HierpipeError(f"{path}: image not found, expected an existing image file") from None
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise HierpipeError(
            f"{path}: cannot decode the image, expected a file PIL can read (PNG, JPEG, ...)"
        ) from error
    return np.asarray(ImageOps.pad(rgb, (size, size), color="white"))


def draw_image_grid(
    rows: Sequence[tuple[str, Sequence[Tile]]], *, title: str, thumbnail: int = 96
) -> Figure:
    """One row of ``thumbnail``-pixel tiles per ``(label, tiles)`` entry, the label on the left,
    each tile's caption under it; rows may differ in length (or be empty)."""
    thumbnail = check_int("thumbnail", thumbnail, 1)
    if not rows:
        raise HierpipeError("rows: expected at least one (label, tiles) row, got none")
    columns = max(len(tiles) for _, tiles in rows)
    if columns == 0:
        raise HierpipeError("rows: expected at least one tile, every row is empty")
    # Load everything before drawing, so a bad file fails fast and names itself.
    images = [[_thumbnail(Path(tile.path), thumbnail) for tile in tiles] for _, tiles in rows]

    tile_inches = thumbnail / 100  # new_figure draws 100 px per inch
    width = _LABEL_WIDTH + columns * (tile_inches + _TILE_GAP)
    height = _TITLE_HEIGHT + len(rows) * (tile_inches + _CAPTION_HEIGHT)
    # Every size is known, so each axes is placed in inches: constrained layout would solve
    # for the same places at a cost that grows with the tiles (0.5 s of a 50-tile grid).
    figure = new_figure(width, height, constrained=False)
    figure.suptitle(title, y=1 - _TITLE_PAD / height, va="top")

    def place(left: float, bottom: float, box_width: float) -> Axes:
        return figure.add_axes(
            (left / width, bottom / height, box_width / width, tile_inches / height)
        )

    caption_chars = max(8, thumbnail // 6)  # about what fits under the tile at fontsize 7
    for r, ((label, tiles), row_images) in enumerate(zip(rows, images, strict=True)):
        bottom = height - _TITLE_HEIGHT - r * (tile_inches + _CAPTION_HEIGHT) - tile_inches
        label_axes = place(0.0, bottom, _LABEL_WIDTH - _TILE_GAP)
        label_axes.set_axis_off()
        label_axes.text(
            1.0,
            0.5,
            textwrap.fill(label, 16, max_lines=3, placeholder="…"),
            transform=label_axes.transAxes,
            ha="right",
            va="center",
        )
        for c, (tile, image) in enumerate(zip(tiles, row_images, strict=True)):
            left = _LABEL_WIDTH + c * (tile_inches + _TILE_GAP) + _TILE_GAP / 2
            axes = place(left, bottom, tile_inches)
            axes.imshow(image)
            axes.set_xticks([])
            axes.set_yticks([])
            axes.set_xlabel(
                textwrap.fill(tile.caption, caption_chars, max_lines=2, placeholder="…"),
                fontsize=7,
            )
            for spine in axes.spines.values():
                if tile.correct is None:
                    spine.set_visible(False)
                else:
                    spine.set_edgecolor(BORDER_COLOURS[tile.correct])
                    spine.set_linewidth(_BORDER_WIDTH)
    return figure


def _at_most(name: str, value: int, limit: int, what: str) -> int:
    value = check_int(name, value, 1)
    if value > limit:
        raise HierpipeError(f"{name}: expected at most {limit} ({what}), got {value}")
    return value


def _relative_norms(name: str, points: np.ndarray, curvature: float) -> np.ndarray:
    """Each row's norm over the ball radius 1/sqrt(c); an error unless all are below 1."""
    check_in_ball(name, points, curvature)
    return np.sqrt(curvature * np.square(points, dtype=np.float64).sum(axis=1))


def boundary_proxy_neighbours(
    proxies: np.ndarray,
    samples: np.ndarray,
    curvature: float,
    *,
    proxies_shown: int = 4,
    k: int = 4,
) -> list[tuple[int, float, np.ndarray]]:
    """The ``proxies_shown`` proxies nearest the boundary of the Poincaré ball of ``curvature``
    (largest Euclidean norm, ties by lower index), as ``(proxy index, norm / ball radius, the
    indices of its k nearest samples by Poincaré distance, nearest first)``.

    Proxies (M, D) and samples (N, D) must lie strictly inside the ball of radius 1/sqrt(c).
    """
    check_metric("poincare", curvature)
    proxies, samples = (
        check_points("proxies", "(M, D)", proxies),
        check_points("samples", "(N, D)", samples),
    )
    if proxies.shape[1] != samples.shape[1]:
        raise HierpipeError(
            f"samples: expected dimension {proxies.shape[1]} like proxies, got {samples.shape[1]}"
        )
    proxies_shown = _at_most("proxies_shown", proxies_shown, len(proxies), "the proxies")
    k = _at_most("k", k, len(samples), "the samples")
    relative_norms = _relative_norms("proxies", proxies, curvature)
    _relative_norms("samples", samples, curvature)
    chosen = np.argsort(-relative_norms, kind="stable")[:proxies_shown]
    neighbours = nearest_neighbours(proxies[chosen], k, samples, "poincare", curvature=curvature)
    return [
        (int(p), float(relative_norms[p]), row) for p, row in zip(chosen, neighbours, strict=True)
    ]


def retrieval_examples(
    embeddings: np.ndarray,
    labels: np.ndarray,
    *,
    queries: int = 6,
    k: int = 4,
    distance: str,
    curvature: float | None = None,
    seed: int = 0,
) -> list[tuple[int, np.ndarray]]:
    """``queries`` query indices, each with the indices of its k nearest other items.

    Queries are drawn with ``numpy.random.default_rng(seed)``, from distinct classes while
    classes last. As in the evaluation, the set is its own gallery and a query's own row is
    excluded by index; ``distance`` and ``curvature`` as in ``nearest_neighbours``.
    """
    embeddings = check_points("embeddings", "(N, D)", embeddings)
    n = len(embeddings)
    labels = class_labels("labels", labels, None)
    if len(labels) != n:
        raise HierpipeError(f"labels: expected {n} labels like embeddings, got {len(labels)}")
    check_metric(distance, curvature, "distance")
    if distance == "poincare":
        _relative_norms("embeddings", embeddings, curvature)
    queries = _at_most("queries", queries, n, "the items")
    k = _at_most("k", k, n - 1, "the other items")

    # In a random order of all items, each class's first item is a random member of it and
    # the classes come in random order; the other items follow, for when classes run out.
    order = np.random.default_rng(seed).permutation(n)
    _, first = np.unique(labels[order], return_index=True)
    is_first = np.zeros(n, dtype=bool)
    is_first[first] = True
    chosen = np.concatenate([order[is_first], order[~is_first]])[:queries]

    # One neighbour more than needed, then the query itself is dropped, or the last one if a
    # duplicate of the query outranked it: the k nearest with self excluded, for len(chosen)
    # rows instead of a search for all n.
    found = nearest_neighbours(embeddings[chosen], k + 1, embeddings, distance, curvature=curvature)
    examples = []
    for query, row in zip(chosen, found, strict=True):
        others = row[row != query]
        examples.append((int(query), others[:k]))
    return examples
