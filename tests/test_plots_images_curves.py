"""Image grids, line panels and the selections behind them: rendered files, borders, the
picked proxies / queries / neighbours against brute force, and every error message."""

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from PIL import Image

from hierpipe.core.errors import HierpipeError
from hierpipe.reporting.plots.canvas import save_figure
from hierpipe.reporting.plots.curves import (
    Panel,
    Series,
    dimension_panel,
    draw_line_panels,
    hs_curve_panel,
    training_panels,
)
from hierpipe.reporting.plots.image_grid import (
    BORDER_COLOURS,
    Tile,
    boundary_proxy_neighbours,
    draw_image_grid,
    retrieval_examples,
)

# --- rendering ---------------------------------------------------------------------------------


def _rendered(draw: Callable[[], Figure], directory: Path) -> tuple[Figure, Image.Image]:
    """Draw twice, save both, check the files are real, non-blank and byte-identical."""
    first, second = draw(), draw()
    png, pdf = save_figure(first, directory / "first")
    png_again, _ = save_figure(second, directory / "second")
    assert png.read_bytes() == png_again.read_bytes()
    assert pdf.read_bytes().startswith(b"%PDF")
    image = Image.open(png)
    assert image.width > 200 and image.height > 200
    assert np.asarray(image.convert("L"), dtype=np.float64).std() > 10
    return first, image


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    """A landscape PNG, a portrait JPEG and a greyscale PNG with alpha, in ``tmp_path``."""
    ramp = np.linspace(0, 255, 60, dtype=np.uint8)
    landscape = np.stack([np.tile(ramp, (30, 1)), np.full((30, 60), 40, np.uint8)] * 2, axis=2)
    portrait = np.zeros((50, 20, 3), np.uint8)
    portrait[::5] = (20, 90, 200)
    paths = {
        "png": tmp_path / "landscape.png",
        "jpeg": tmp_path / "portrait.jpg",
        "grey": tmp_path / "grey.png",
    }
    Image.fromarray(landscape[..., :3]).save(paths["png"])
    Image.fromarray(portrait).save(paths["jpeg"], quality=90)
    Image.fromarray(landscape[..., :2]).save(paths["grey"])
    return paths


def _grid_rows(images: dict[str, Path]) -> list[tuple[str, list[Tile]]]:
    return [
        (
            "query 7: a rather long class name",
            [
                Tile(images["png"], "query"),
                Tile(images["jpeg"], "right class", correct=True),
                Tile(images["grey"], "wrong class with a long caption", correct=False),
            ],
        ),
        ("query 2", [Tile(images["jpeg"], "alone", correct=True)]),
        ("empty row", []),
    ]


def test_image_grid_renders_with_coloured_borders(images, tmp_path):
    rows = _grid_rows(images)
    figure, png = _rendered(lambda: draw_image_grid(rows, title="Retrieval"), tmp_path)
    tiles = [tile for _, row in rows for tile in row]
    tile_axes = [axes for axes in figure.axes if axes.images]
    assert len(tile_axes) == len(tiles)
    pixels = np.asarray(png.convert("RGB"))
    for axes, tile in zip(tile_axes, tiles, strict=True):
        assert axes.images[0].get_array().shape == (96, 96, 3)  # letterboxed square
        spines = list(axes.spines.values())
        if tile.correct is None:
            assert not any(spine.get_visible() for spine in spines)
            continue
        colour = to_rgba(BORDER_COLOURS[tile.correct])
        assert all(spine.get_edgecolor() == colour for spine in spines)
        # the border must be in the PNG too: the middle of the tile's left edge
        box = axes.get_window_extent()
        x, y = round(box.x0), png.height - round((box.y0 + box.y1) / 2)
        expected = np.array(colour[:3]) * 255
        assert np.abs(pixels[y, x].astype(float) - expected).max() < 30


def test_image_grid_errors(images, tmp_path):
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"not an image at all")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(images["jpeg"].read_bytes()[:300])
    missing = tmp_path / "missing.png"
    for path, message in [
        (missing, "image not found"),
        (corrupt, "cannot decode the image"),
        (truncated, "cannot decode the image"),
    ]:
        rows = [("ok", [Tile(images["png"])]), ("bad", [Tile(path)])]
        with pytest.raises(HierpipeError, match=f"{path.name}: {message}"):
            draw_image_grid(rows, title="t")
    with pytest.raises(HierpipeError, match="rows: expected at least one"):
        draw_image_grid([], title="t")
    with pytest.raises(HierpipeError, match="every row is empty"):
        draw_image_grid([("a", []), ("b", [])], title="t")
    with pytest.raises(HierpipeError, match="thumbnail: expected an integer >= 1"):
        draw_image_grid([("a", [Tile(images["png"])])], title="t", thumbnail=0)


# --- boundary proxies --------------------------------------------------------------------------


def _poincare_distances(x: np.ndarray, y: np.ndarray, c: float) -> np.ndarray:
    """(2/sqrt(c)) artanh(sqrt(c) ||(-x) (+)_c y||) for every pair, by Möbius addition."""
    a, b = -x[:, None, :], y[None, :, :]
    ab = (a * b).sum(-1, keepdims=True)
    a2, b2 = (a * a).sum(-1, keepdims=True), (b * b).sum(-1, keepdims=True)
    mobius = ((1 + 2 * c * ab + c * b2) * a + (1 - c * a2) * b) / (1 + 2 * c * ab + c**2 * a2 * b2)
    return 2 / math.sqrt(c) * np.arctanh(math.sqrt(c) * np.linalg.norm(mobius, axis=-1))


def _ball_points(rng: np.random.Generator, n: int, d: int, c: float) -> np.ndarray:
    directions = rng.normal(size=(n, d))
    directions /= np.linalg.norm(directions, axis=1, keepdims=True)
    return directions * rng.uniform(0.05, 0.99, size=(n, 1)) / math.sqrt(c)


def test_boundary_proxies_and_neighbours_match_brute_force():
    c = 0.5
    rng = np.random.default_rng(3)
    proxies = _ball_points(rng, 12, 2, c)
    proxies[[4, 9]] = proxies[0, ::-1]  # rows 0, 4, 9 tie in norm (coordinates swapped)
    proxies[[0, 4, 9]] *= 1.3 / np.linalg.norm(proxies[0])  # ...and are the outermost
    samples = _ball_points(rng, 40, 2, c).astype(np.float32)

    got = boundary_proxy_neighbours(proxies, samples, c, proxies_shown=5, k=6)

    norms = np.linalg.norm(proxies, axis=1)
    expected_order = sorted(range(len(proxies)), key=lambda i: (-norms[i], i))[:5]
    assert [p for p, _, _ in got] == expected_order
    assert expected_order[:3] == [0, 4, 9]
    distances = _poincare_distances(proxies, samples.astype(np.float64), c)
    for p, relative, neighbours in got:
        assert relative == pytest.approx(norms[p] * math.sqrt(c), rel=1e-12)
        assert 0 <= relative < 1
        np.testing.assert_array_equal(neighbours, np.argsort(distances[p])[:6])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda p, s: (p * 10, s), r"proxies: expected finite points .* got row \d+"),
        (lambda p, s: (p, s * 10), r"samples: expected finite points .* got row \d+"),
        (lambda p, s: (p, s[:, :2]), "samples: expected dimension 3 like proxies, got 2"),
        (lambda p, s: (p[0], s), r"proxies: expected a 2-D \(M, D\) array with at least one row"),
        (lambda p, s: (p, s[:0]), r"samples: expected a 2-D \(N, D\) array with at least one row"),
        (lambda p, s: (np.where(p > 0, np.nan, p), s), "proxies: expected finite values"),
    ],
)
def test_boundary_proxy_errors(change, message):
    rng = np.random.default_rng(0)
    proxies, samples = change(_ball_points(rng, 5, 3, 1.0), _ball_points(rng, 8, 3, 1.0))
    with pytest.raises(HierpipeError, match=message):
        boundary_proxy_neighbours(proxies, samples, 1.0)


def test_boundary_proxy_count_errors():
    rng = np.random.default_rng(0)
    proxies, samples = _ball_points(rng, 5, 3, 1.0), _ball_points(rng, 8, 3, 1.0)
    with pytest.raises(HierpipeError, match=r"proxies_shown: expected at most 5 \(the proxies\)"):
        boundary_proxy_neighbours(proxies, samples, 1.0, proxies_shown=6)
    with pytest.raises(HierpipeError, match=r"k: expected at most 8 \(the samples\), got 9"):
        boundary_proxy_neighbours(proxies, samples, 1.0, k=9)
    with pytest.raises(HierpipeError, match="curvature: must be > 0"):
        boundary_proxy_neighbours(proxies, samples, -1.0)


# --- retrieval examples ------------------------------------------------------------------------


def _labelled(n: int = 30, classes: int = 5) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    return rng.normal(size=(n, 4)).astype(np.float32), np.arange(n) % classes


@pytest.mark.parametrize(("distance", "curvature"), [("cosine", None), ("poincare", 0.01)])
def test_retrieval_examples_match_brute_force(distance, curvature):
    embeddings, labels = _labelled()
    got = retrieval_examples(
        embeddings, labels, queries=4, k=5, distance=distance, curvature=curvature, seed=7
    )
    x = embeddings.astype(np.float64)
    if distance == "cosine":
        unit = x / np.linalg.norm(x, axis=1, keepdims=True)
        distances = 1 - unit @ unit.T
    else:
        distances = _poincare_distances(x, x, curvature)
    np.fill_diagonal(distances, np.inf)  # the query is not its own neighbour
    queries = [q for q, _ in got]
    assert len(set(labels[queries])) == 4  # distinct classes while they last
    for query, neighbours in got:
        np.testing.assert_array_equal(neighbours, np.argsort(distances[query])[:5])
    again = retrieval_examples(
        embeddings, labels, queries=4, k=5, distance=distance, curvature=curvature, seed=7
    )
    assert [q for q, _ in again] == queries


def test_retrieval_queries_fill_beyond_the_classes_and_follow_the_seed():
    embeddings, labels = _labelled(n=30, classes=5)
    by_seed = {}
    for seed in (0, 1):
        examples = retrieval_examples(embeddings, labels, queries=8, distance="chord", seed=seed)
        chosen = by_seed[seed] = [q for q, _ in examples]
        assert len(set(chosen)) == 8
        assert set(labels[chosen[:5]]) == set(range(5))  # every class before any repeats
    assert by_seed[0] != by_seed[1]


def test_retrieval_examples_exclude_the_query_not_its_duplicate():
    embeddings, labels = _labelled(n=10)
    embeddings[3] = embeddings[8]
    examples = dict(retrieval_examples(embeddings, labels, queries=10, k=9, distance="euclidean"))
    assert examples[8][0] == 3 and 8 not in examples[8]
    assert examples[3][0] == 8 and 3 not in examples[3]
    assert all(sorted(row) == sorted(set(range(10)) - {q}) for q, row in examples.items())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"labels": np.arange(29)}, "labels: expected 30 labels like embeddings, got 29"),
        ({"labels": np.zeros(30)}, "labels: expected a non-empty 1-D integer array"),
        ({"queries": 31}, r"queries: expected at most 30 \(the items\), got 31"),
        ({"k": 30}, r"k: expected at most 29 \(the other items\), got 30"),
        ({"distance": "manhattan"}, "distance: unknown 'manhattan'"),
        ({"distance": "poincare"}, "curvature: required for distance 'poincare'"),
        (
            {"distance": "poincare", "curvature": 1.0},
            r"embeddings: expected finite points strictly inside the Poincaré ball of "
            r"curvature 1 \(radius 1\), got row",
        ),
        ({"embeddings": np.full((30, 4), np.inf)}, "embeddings: expected finite values"),
    ],
)
def test_retrieval_example_errors(kwargs, message):
    embeddings, labels = _labelled()
    arguments = {"embeddings": embeddings, "labels": labels, "distance": "cosine", **kwargs}
    with pytest.raises(HierpipeError, match=message):
        retrieval_examples(**arguments)


# --- line panels -------------------------------------------------------------------------------


def _logs() -> dict[str, pd.DataFrame]:
    epochs = np.arange(1, 9)
    first = pd.DataFrame(
        {
            "epoch": epochs,
            "step": epochs * 10,
            "train_loss": 3 / epochs,
            "val_top1": np.full(8, np.nan),  # validation off: no panel
            "epoch_time": np.full(8, 2.5),
            "note": ["x"] * 8,
            "scale": np.linspace(10, 14, 8),
        }
    )
    second = first.drop(columns="scale").assign(train_loss=2.5 / epochs)
    return {"seed 1": first, "seed 2": second}


def test_training_panels_pick_the_learnt_columns():
    panels = training_panels(_logs())
    assert [panel.title for panel in panels] == ["train_loss", "scale"]
    assert [[s.label for s in panel.series] for panel in panels] == [
        ["seed 1", "seed 2"],
        ["seed 1"],
    ]
    assert all(panel.xlabel == "epoch" and panel.ylabel == panel.title for panel in panels)
    np.testing.assert_array_equal(panels[0].series[1].y, 2.5 / np.arange(1, 9))


def test_hs_and_dimension_panels():
    narrow = hs_curve_panel({"a": {4: 0.5, 1: 0.9, 2: 0.7}, "b": {1: 0.8, 10: 0.4}})
    assert narrow.xscale == "linear"
    np.testing.assert_array_equal(narrow.series[0].x, [1, 2, 4])
    np.testing.assert_array_equal(narrow.series[0].y, [0.9, 0.7, 0.5])
    assert hs_curve_panel({"a": {1: 0.9, 20: 0.5}}).xscale == "log"
    dims = dimension_panel({"a": {512: 0.7, 64: 0.5}}, "MAP@R")
    assert (dims.xscale, dims.ylabel) == ("log2", "MAP@R")
    np.testing.assert_array_equal(dims.series[0].x, [64, 512])
    with pytest.raises(HierpipeError, match="hs_by_model: expected at least one model"):
        hs_curve_panel({})


def _all_panels() -> list[Panel]:
    ks = {1: 0.9, 2: 0.85, 5: 0.8, 50: 0.7}
    many = {f"model {i}": {k: v - 0.02 * i for k, v in ks.items()} for i in range(8)}
    many["model 3"] = {k: np.nan for k in ks}  # all NaN: left out of the panel
    many["model 5"][5] = np.nan  # one point skipped
    dims = {"a": {64: 0.5, 128: 0.6, 512: 0.65}, "model 1": {64: 0.4, 512: 0.5}}
    return [hs_curve_panel(many), dimension_panel(dims), *training_panels(_logs())]


def test_line_panels_render(tmp_path):
    figure, _ = _rendered(lambda: draw_line_panels(_all_panels(), title="Curves"), tmp_path)
    hs, dims, loss, scale = figure.axes[:4]
    lines = {line.get_label(): line for line in hs.get_lines()}
    assert len(lines) == 7 and "model 3" not in lines
    assert len(lines["model 5"].get_xdata()) == 3
    # more than six series: the legend sits right of the axes
    assert hs.get_legend().get_window_extent().x0 > hs.get_window_extent().x1
    assert loss.get_legend().get_window_extent().x0 < loss.get_window_extent().x1
    assert (hs.get_xscale(), hs.xaxis.get_transform().base) == ("log", 10)
    assert (dims.get_xscale(), dims.xaxis.get_transform().base) == ("log", 2)
    assert scale.get_xscale() == "linear"
    # a label keeps its colour across panels
    assert dims.get_lines()[1].get_color() == lines["model 1"].get_color()


def test_line_panel_errors():
    x = np.arange(1.0, 4.0)
    with pytest.raises(HierpipeError, match="panels: expected at least one panel"):
        draw_line_panels([], title="t")
    cases = [
        (
            Panel(
                "loss", "e", "l", [Series("a", x, np.full(3, np.nan)), Series("b", x[:0], x[:0])]
            ),
            "panel 'loss': expected at least one series with a finite point",
        ),
        (
            Panel("loss", "e", "l", [Series("a", x, x[:2])]),
            r"panel 'loss', series 'a': expected 1-D x and y of equal length",
        ),
        (
            Panel("hs", "k", "h", [Series("a", x - 1, x)], xscale="log"),
            r"panel 'hs', series 'a': expected x > 0 on a log x scale, got 0",
        ),
        (
            Panel("hs", "k", "h", [Series("a", x, x)], xscale="symlog"),
            "panel 'hs': unknown xscale 'symlog', expected one of linear, log, log2",
        ),
    ]
    for panel, message in cases:
        with pytest.raises(HierpipeError, match=message):
            draw_line_panels([Panel("fine", "e", "l", [Series("a", x, x)]), panel], title="t")


def test_training_panel_errors():
    with pytest.raises(HierpipeError, match="logs: expected at least one training log"):
        training_panels({})
    with pytest.raises(HierpipeError, match=r"logs\['seed 1'\]: expected an 'epoch' column"):
        training_panels({"seed 1": pd.DataFrame({"train_loss": [1.0]})})
    only_nan = pd.DataFrame({"epoch": [1, 2], "val_top1": [np.nan, np.nan], "time": [1.0, 2.0]})
    with pytest.raises(HierpipeError, match="logs: expected a numeric column besides epoch"):
        training_panels({"seed 1": only_nan})
