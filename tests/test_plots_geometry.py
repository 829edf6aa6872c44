"""Embedding maps, affinity matrices and dendrograms: they render, deterministically, and
reject bad input by name; the Poincaré projection keeps distances to the origin in order."""

import io
import subprocess
import sys

import numpy as np
import pytest
import torch
from matplotlib.collections import LineCollection
from matplotlib.colors import to_hex
from PIL import Image

from hierpipe.core.errors import HierpipeError
from hierpipe.core.geometry import poincare_ball, to_poincare
from hierpipe.core.hierarchy import ClassTree
from hierpipe.reporting.plots.affinity import draw_affinity_matrices
from hierpipe.reporting.plots.canvas import save_figure
from hierpipe.reporting.plots.dendrogram import draw_tree_comparison
from hierpipe.reporting.plots.embedding_map import draw_embedding_map, project_ball_to_disk

CURVATURE = 0.1
DIM = 6
# 2 groups x 2 subgroups x 3 classes, class ids shuffled against the tree order.
PATHS = [
    ("animal", "bird", "owl"),
    ("plant", "tree", "oak"),
    ("animal", "fish", "cod"),
    ("plant", "flower", "rose"),
    ("animal", "bird", "wren"),
    ("plant", "tree", "elm"),
    ("animal", "fish", "eel"),
    ("plant", "flower", "lily"),
    ("animal", "bird", "kite"),
    ("plant", "tree", "ash"),
    ("animal", "fish", "pike"),
    ("plant", "flower", "iris"),
]
TREE = ClassTree.from_paths(PATHS)
C = TREE.num_classes


def _embedding(n: int = 240) -> dict[str, np.ndarray]:
    """Euclidean points with the tree's structure: groups, subgroups, classes, samples."""
    rng = np.random.default_rng(0)
    nodes: dict[tuple[str, ...], np.ndarray] = {}
    for path in PATHS:
        for depth in range(1, len(path) + 1):
            prefix = path[:depth]
            if prefix not in nodes:
                parent = nodes.get(prefix[:-1], np.zeros(DIM))
                nodes[prefix] = parent + rng.normal(scale=1.0, size=DIM)
    centres = np.array([nodes[path] for path in PATHS])
    classes = rng.integers(0, C, size=n)
    proxies = np.array([0.5 * nodes[p] for p in nodes if len(p) < 3])
    return {
        "samples": centres[classes] + rng.normal(scale=0.3, size=(n, DIM)),
        "sample_classes": classes,
        "representatives": centres,
        "representative_classes": np.arange(C),
        "hier_proxies": proxies,
    }


def _in_ball(x: np.ndarray) -> np.ndarray:
    return to_poincare(torch.from_numpy(x), CURVATURE, clip_r=2.3).numpy()


EUCLIDEAN = _embedding()
POINCARE = {k: _in_ball(v) if v.dtype.kind == "f" else v for k, v in EUCLIDEAN.items()}


def _saved(figure, tmp_path, name: str) -> bytes:
    """Save; check the PNG is a real, non-blank picture and the PDF a PDF; the PNG's bytes."""
    png, pdf = save_figure(figure, tmp_path / name)
    assert pdf.read_bytes().startswith(b"%PDF")
    data = png.read_bytes()
    image = Image.open(io.BytesIO(data))
    assert image.width > 200 and image.height > 200
    assert np.asarray(image.convert("L"), dtype=np.float64).std() > 10
    return data


def _rendered_twice(draw, tmp_path) -> None:
    first = _saved(draw(), tmp_path, "first")
    assert _saved(draw(), tmp_path, "second") == first


# --- embedding map -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def umap_pngs(tmp_path_factory) -> list[bytes]:
    """The one UMAP rendering of the module (its first call JIT-compiles for ~10 s): a
    spherical map with proxies twice, then a Euclidean one without."""
    folder = tmp_path_factory.mktemp("umap")

    def draw(space: str, hier_proxies):
        inputs = {**EUCLIDEAN, "hier_proxies": hier_proxies}
        return draw_embedding_map(**inputs, tree=TREE, space=space, title=space, max_points=150)

    proxies = EUCLIDEAN["hier_proxies"]
    return [
        _saved(draw("sphere", proxies), folder, "sphere_1"),
        _saved(draw("sphere", proxies), folder, "sphere_2"),
        _saved(draw("euclidean", None), folder, "euclidean"),
    ]


def test_umap_maps_render_deterministically(umap_pngs):
    sphere_1, sphere_2, euclidean = umap_pngs
    assert sphere_1 == sphere_2
    assert euclidean != sphere_1


# One UMAP layout in a fresh process: the layout, and how many of its epochs' kernel
# compilations numba loaded from its on-disk cache.
_UMAP_IN_A_PROCESS = """
import sys
import numpy as np
from hierpipe.reporting.plots.embedding_map import _umap, _umap_layout
points = np.random.default_rng(0).standard_normal((40, 5)).astype(np.float32)
np.save(sys.argv[1], _umap_layout(points, "euclidean", seed=3))
kernel = _umap().layouts._nb_optimize_layout_euclidean_single_epoch
print(sum(kernel.stats.cache_hits.values()))
"""


def test_umap_kernels_compile_once_and_lay_out_the_same_from_the_cache(tmp_path):
    hits = []
    for run in range(2):
        result = subprocess.run(
            [sys.executable, "-c", _UMAP_IN_A_PROCESS, str(tmp_path / f"{run}.npy")],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stderr[-3000:]
        hits.append(int(result.stdout.split()[-1]))
    assert hits[1] > 0  # the second process compiled nothing: it loaded the first's code
    assert np.array_equal(np.load(tmp_path / "0.npy"), np.load(tmp_path / "1.npy"))


def test_poincare_map_renders_deterministically(tmp_path):
    _rendered_twice(
        lambda: draw_embedding_map(
            **POINCARE, tree=TREE, space="poincare", curvature=CURVATURE, title="Poincaré"
        ),
        tmp_path,
    )


def _links(figure) -> list[LineCollection]:
    return [c for c in figure.axes[0].collections if isinstance(c, LineCollection)]


def test_poincare_map_links_points_to_proxies():
    figure = draw_embedding_map(
        **POINCARE, tree=TREE, space="poincare", curvature=CURVATURE, title="t"
    )
    (links,) = _links(figure)
    proxy_xy = figure.axes[0].collections[-1].get_offsets()
    segments = links.get_segments()
    num_proxies = len(POINCARE["hier_proxies"])
    assert 0 < len(segments) <= num_proxies + C + len(POINCARE["samples"])
    # Every link ends at a proxy (the crosses, drawn last).
    ends = np.array([segment[1] for segment in segments])
    assert np.isclose(ends[:, None, :], proxy_xy[None]).all(axis=2).any(axis=1).all()


def test_poincare_map_without_proxies_and_with_few_points(tmp_path):
    inputs = {**POINCARE, "hier_proxies": None}
    figure = draw_embedding_map(
        **inputs, tree=TREE, space="poincare", curvature=CURVATURE, title="t", max_points=5
    )
    assert not _links(figure)
    _saved(figure, tmp_path, "map")


def _planar_points(n: int, dim: int) -> np.ndarray:
    """Ball points whose tangent vectors at the origin span one random 2-D plane of R^dim."""
    rng = np.random.default_rng(1)
    frame, _ = np.linalg.qr(rng.normal(size=(dim, 2)))
    tangent = rng.normal(scale=2.0, size=(n, 2)) @ frame.T
    return poincare_ball(CURVATURE).expmap0(torch.from_numpy(tangent)).numpy()


def _distance_to_origin(x: np.ndarray) -> np.ndarray:
    """Poincaré distance to the origin, written independently of hierpipe.core.geometry."""
    root_c = CURVATURE**0.5
    return 2 / root_c * np.arctanh(root_c * np.linalg.norm(x, axis=1))


def test_projection_keeps_planar_points_distances_to_the_origin():
    points = _planar_points(50, dim=7)
    disk = project_ball_to_disk(points, CURVATURE, fit_on=points[:20])
    assert disk.shape == (50, 2)
    np.testing.assert_allclose(
        _distance_to_origin(disk), _distance_to_origin(points), rtol=1e-9, atol=1e-12
    )
    assert (CURVATURE * np.square(disk).sum(axis=1) < 1).all()


def test_projection_never_moves_points_away_from_the_origin():
    points = POINCARE["samples"]
    disk = project_ball_to_disk(points, CURVATURE, fit_on=points)
    assert (_distance_to_origin(disk) <= _distance_to_origin(points) + 1e-9).all()
    assert (CURVATURE * np.square(disk).sum(axis=1) < 1).all()


def test_projection_of_a_single_fitting_point_lies_on_a_line():
    points = POINCARE["samples"][:10]
    disk = project_ball_to_disk(points, CURVATURE, fit_on=points[:1])
    np.testing.assert_array_equal(disk[:, 1], 0.0)


def test_projection_checks_its_inputs():
    points = POINCARE["samples"]
    with pytest.raises(HierpipeError, match=r"fit_on: expected dimension D = 6"):
        project_ball_to_disk(points, CURVATURE, fit_on=points[:, :3])
    with pytest.raises(HierpipeError, match=r"points: expected finite points strictly inside"):
        project_ball_to_disk(points * 10, CURVATURE, fit_on=points)
    with pytest.raises(HierpipeError, match=r"curvature: must be > 0"):
        project_ball_to_disk(points, -1.0, fit_on=points)


def _replaced(inputs: dict, key: str, value) -> dict:
    return {**inputs, key: value}


_NAN_SAMPLES = EUCLIDEAN["samples"].copy()
_NAN_SAMPLES[3, 2] = np.nan


@pytest.mark.parametrize(
    ("change", "options", "message"),
    [
        ({}, {"space": "hyperbolic"}, r"space: unknown 'hyperbolic', expected one of"),
        ({}, {"space": "poincare"}, r"curvature: required for space 'poincare'"),
        ({}, {"space": "sphere", "curvature": 0.1}, r"curvature: only applies to space"),
        ({}, {"space": "poincare", "curvature": -1.0}, r"curvature: must be > 0"),
        ({}, {"space": "sphere", "max_points": 0}, r"max_points: expected an integer >= 1"),
        ({}, {"space": "sphere", "seed": -1}, r"seed: expected an integer >= 0"),
        ({"samples": _NAN_SAMPLES}, {"space": "sphere"}, r"samples: expected finite values"),
        ({"samples": np.ones(4)}, {"space": "sphere"}, r"samples: expected a 2-D \(n, D\)"),
        (
            {"sample_classes": np.arange(5)},
            {"space": "sphere"},
            r"sample_classes: expected one class id per row of samples \(240\), got 5",
        ),
        (
            {"sample_classes": np.full(240, C)},
            {"space": "sphere"},
            r"sample_classes: expected labels in \[0, 11\]",
        ),
        (
            {"representative_classes": np.arange(C) * 1.0},
            {"space": "sphere"},
            r"representative_classes: expected a non-empty 1-D integer array",
        ),
        (
            {"representatives": np.ones((C, DIM + 1))},
            {"space": "sphere"},
            r"representatives: expected dimension D = 6 as samples, got 7",
        ),
        (
            {"hier_proxies": np.full((3, DIM), np.inf)},
            {"space": "sphere"},
            r"hier_proxies: expected finite values",
        ),
        (
            {"hier_proxies": np.ones((3, 2))},
            {"space": "sphere"},
            r"hier_proxies: expected dimension D = 6",
        ),
        (
            {},
            {"space": "poincare", "curvature": CURVATURE},
            r"samples: expected finite points strictly inside the Poincaré ball",
        ),
        (
            {
                "samples": EUCLIDEAN["samples"][:1],
                "sample_classes": np.array([0]),
                "representatives": EUCLIDEAN["representatives"][:1],
                "representative_classes": np.array([0]),
                "hier_proxies": None,
            },
            {"space": "euclidean"},
            r"UMAP needs at least 4 points in all, got 2",
        ),
    ],
)
def test_embedding_map_rejects_bad_input(change, options, message):
    with pytest.raises(HierpipeError, match=message):
        draw_embedding_map(**{**EUCLIDEAN, **change}, tree=TREE, title="t", **options)


# --- affinity matrices ---------------------------------------------------------------------


def _learned_distances(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return TREE.distance_matrix() + rng.random((C, C))


def test_affinity_matrices_render_deterministically(tmp_path):
    panels = [("true tree", TREE.distance_matrix()), ("model", _learned_distances(0))]
    _rendered_twice(lambda: draw_affinity_matrices(panels, TREE, title="affinity"), tmp_path)


def test_affinity_matrices_wrap_beyond_four_panels(tmp_path):
    panels = [(f"model {i}", _learned_distances(i)) for i in range(6)]
    wide = draw_affinity_matrices(panels[:4], TREE, title="four")
    wrapped = draw_affinity_matrices(panels, TREE, title="six")
    assert wrapped.get_figheight() > wide.get_figheight()
    assert wrapped.get_figwidth() == wide.get_figwidth()
    _saved(wrapped, tmp_path, "six")


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        (np.zeros((C, C - 1)), rf"panel 1 'bad': expected a \({C}, {C}\) matrix"),
        (np.full((C, C), np.nan), r"panel 1 'bad': expected finite values"),
        ("distances", r"panel 1 'bad': expected a numeric \(C, C\) array, got str"),
    ],
)
def test_affinity_matrices_name_the_bad_panel(matrix, message):
    panels = [("true tree", TREE.distance_matrix()), ("bad", matrix)]
    with pytest.raises(HierpipeError, match=message):
        draw_affinity_matrices(panels, TREE, title="t")


def test_affinity_matrices_need_a_panel():
    with pytest.raises(HierpipeError, match="panels: expected at least one"):
        draw_affinity_matrices([], TREE, title="t")


# --- dendrograms ---------------------------------------------------------------------------


def test_tree_comparison_renders_deterministically(tmp_path):
    distances = _learned_distances(0)
    _rendered_twice(lambda: draw_tree_comparison(distances, TREE, title="RF 0.2"), tmp_path)


def test_tree_comparison_colours_the_leaf_labels_by_group():
    figure = draw_tree_comparison(_learned_distances(0), TREE, title="t")
    group_of = {path[-1]: path[0] for path in PATHS}
    for ax in figure.axes:
        labels = ax.get_yticklabels()
        assert sorted(label.get_text() for label in labels) == sorted(TREE.classes)
        colour = {}
        for label in labels:
            colour.setdefault(group_of[label.get_text()], set()).add(to_hex(label.get_color()))
        assert all(len(colours) == 1 for colours in colour.values())
        assert colour["animal"] != colour["plant"]


def test_tree_comparison_of_many_classes_shows_a_strip_instead_of_labels(tmp_path):
    big = ClassTree.from_paths(
        [
            (f"g{a}", f"m{a}{b}", f"c{a}_{b}_{k}")
            for a in range(4)
            for b in range(4)
            for k in range(5)
        ]
    )
    distances = big.distance_matrix() + np.random.default_rng(0).random((80, 80))
    figure = draw_tree_comparison(distances, big, title="80 classes")
    assert all(not ax.get_yticklabels() for ax in figure.axes if ax.get_title())
    _saved(figure, tmp_path, "big")


@pytest.mark.parametrize(
    ("distances", "tree", "message"),
    [
        (np.zeros((C + 1, C + 1)), TREE, rf"distances: expected a \({C}, {C}\) matrix"),
        (np.full((C, C), np.inf), TREE, r"distances: expected finite values"),
        (np.zeros((1, 1)), ClassTree.from_paths([("a", "b")]), r"at least 2 classes, got 1"),
    ],
)
def test_tree_comparison_rejects_bad_input(distances, tree, message):
    with pytest.raises(HierpipeError, match=message):
        draw_tree_comparison(distances, tree, title="t")
