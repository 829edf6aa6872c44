"""Render an experiment's figures (hierpipe.reporting.plots.plan) from its results directory.

Reads what the pipeline wrote (each run's config.yaml, embeddings, representatives, training
log and metrics, and the summary) and hands arrays to the drawing functions, which know
nothing about files. Class representatives are those evaluation judged against the tree:
a model's class proxies if it has them, else its class prototypes, compared by the same
distance as there, so a learned tree drawn here is the tree its Robinson-Foulds distance
was measured on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from hierpipe.core.config import RunConfig, read_run_config
from hierpipe.core.errors import HierpipeError
from hierpipe.core.geometry import pairwise_distances
from hierpipe.core.hierarchy import ClassTree
from hierpipe.core.io import read_parquet
from hierpipe.data import read_dataset
from hierpipe.evaluation.embedding_files import Embeddings, read_embeddings, read_representatives
from hierpipe.evaluation.evaluate import distance_curvature, representative_metric
from hierpipe.evaluation.metrics_file import read_metrics
from hierpipe.reporting.plots.affinity import draw_affinity_matrices
from hierpipe.reporting.plots.canvas import save_figure
from hierpipe.reporting.plots.curves import (
    dimension_panel,
    draw_line_panels,
    hs_curve_panel,
    training_panels,
)
from hierpipe.reporting.plots.dendrogram import draw_tree_comparison
from hierpipe.reporting.plots.embedding_map import draw_embedding_map
from hierpipe.reporting.plots.image_grid import (
    Tile,
    boundary_proxy_neighbours,
    draw_image_grid,
    retrieval_examples,
)
from hierpipe.reporting.plots.plan import Figure, figure_plan
from hierpipe.reporting.retrieval_table import architecture_family, method_name

log = logging.getLogger(__name__)


@dataclass
class Run:
    """One run's outputs, loaded on first use."""

    directory: Path

    @cached_property
    def config(self) -> RunConfig:
        return read_run_config(self.directory / "config.yaml")

    @cached_property
    def embeddings(self) -> Embeddings:
        return read_embeddings(self.directory / "embeddings.parquet")

    @cached_property
    def representatives(self) -> pd.DataFrame:
        return read_representatives(self.directory / "representatives.parquet")

    @cached_property
    def metrics(self) -> dict[str, Any]:
        return read_metrics(self.directory / "metrics.json")["metrics"]

    @cached_property
    def training_log(self) -> pd.DataFrame:
        return read_parquet(self.directory / "train_log.parquet").to_pandas()

    @cached_property
    def class_kind(self) -> str:
        """`proxy` when the model has class proxies, else `prototype`, or `ball_prototype`
        for embeddings measured in the ball, which have only those."""
        kinds = set(self.representatives["kind"])
        for kind in ("proxy", "prototype"):
            if kind in kinds:
                return kind
        return "ball_prototype"

    def vectors(self, kind: str) -> tuple[np.ndarray, np.ndarray]:
        """(class ids, vectors) of one kind of representative, by class id."""
        rows = self.representatives[self.representatives["kind"] == kind]
        if kind != "hier_proxy":
            rows = rows.sort_values("class_id")
        return rows["class_id"].to_numpy(), np.stack(rows["vector"].to_numpy()).astype(np.float64)

    @cached_property
    def class_distances(self) -> tuple[np.ndarray, np.ndarray]:
        """(class ids, their distance matrix): the class representatives as evaluation
        measured them (proxies cover only the training classes of a class-disjoint split)."""
        class_ids, vectors = self.vectors(self.class_kind)
        metric, curvature = representative_metric(self.config, self.class_kind)
        points = torch.from_numpy(vectors)
        return class_ids, pairwise_distances(points, points, metric, curvature).numpy()

    def subset(self, name: str) -> np.ndarray:
        return self.embeddings.split == name


class Experiment:
    """An experiment's results directory and the datasets its runs used."""

    def __init__(self, results: str | Path) -> None:
        self.results = Path(results)
        self._runs: dict[tuple[str, str], Run] = {}
        self._datasets: dict[str, tuple[pd.DataFrame, ClassTree]] = {}
        self._image_paths: dict[str, dict[int, Path]] = {}

    def run(self, dataset: str, run_id: str) -> Run:
        key = (dataset, run_id)
        if key not in self._runs:
            self._runs[key] = Run(self.results / dataset / run_id)
        return self._runs[key]

    def dataset(self, run: Run) -> tuple[pd.DataFrame, ClassTree]:
        """(samples, tree) of the run's dataset."""
        root = run.config.data_dir
        if root not in self._datasets:
            self._datasets[root] = read_dataset(root)
        return self._datasets[root]

    def image_paths(self, run: Run) -> dict[int, Path]:
        """Image file of each sample id of the run's dataset."""
        root = run.config.data_dir
        if root not in self._image_paths:
            samples, _ = self.dataset(run)
            self._image_paths[root] = {
                int(i): Path(root) / p
                for i, p in zip(samples["sample_id"], samples["path"], strict=True)
            }
        return self._image_paths[root]

    @cached_property
    def summary(self) -> pd.DataFrame:
        return read_parquet(self.results / "summary.parquet").to_pandas()


def render_figures(
    params: Mapping[str, Any], results: str | Path, group: str | None = None
) -> dict[Figure, list[Path]]:
    """Draw every figure of the plan (of one rendering `group`, or all); returns the files."""
    experiment = Experiment(results)
    written = {}
    for figure in figure_plan(params):
        if group is not None and figure.group != group:
            continue
        drawn = DRAWERS[figure.kind](experiment, figure)
        written[figure] = save_figure(drawn, experiment.results / figure.stem)
        log.info("%s: %s", figure.stem, figure.kind)
    return written


def _first_run(experiment: Experiment, figure: Figure) -> Run:
    return experiment.run(figure.dataset, figure.runs[0])


def _title(figure: Figure, what: str) -> str:
    return f"{figure.dataset} · {figure.label}\n{what}"


# how titles name each kind of class representative
KIND_NAMES = {
    "proxy": "class proxies",
    "prototype": "class prototypes",
    "ball_prototype": "class prototypes in the ball (gyromidpoints)",
}


def _embedding_map(experiment: Experiment, figure: Figure) -> Any:
    run = _first_run(experiment, figure)
    _, tree = experiment.dataset(run)
    # measured embeddings may have no training split: the evaluated subset stands in
    subset = "train" if run.subset("train").any() else run.config.evaluate.subset
    train = run.subset(subset)
    space = run.config.head.space
    # in the ball the classes are drawn as their gyromidpoints, the points HIER's proxies
    # are judged against; elsewhere as the representatives evaluation used
    kind = "ball_prototype" if space == "poincare" else run.class_kind
    class_ids, vectors = run.vectors(kind)
    kinds = set(run.representatives["kind"])
    proxies = run.vectors("hier_proxy")[1] if "hier_proxy" in kinds else None
    return draw_embedding_map(
        run.embeddings.embedding[train],
        run.embeddings.label[train],
        vectors,
        class_ids,
        tree,
        space=space,
        curvature=run.config.head.curvature if space == "poincare" else None,
        hier_proxies=proxies,
        title=_title(
            figure,
            f"{'training' if subset == 'train' else subset} embeddings and {KIND_NAMES[kind]}",
        ),
        seed=run.config.seed,
    )


def _tree_comparison(experiment: Experiment, figure: Figure) -> Any:
    run = _first_run(experiment, figure)
    _, tree = experiment.dataset(run)
    prefix = f"hierarchy/{run.class_kind}"
    values = {
        "RF": run.metrics.get(f"{prefix}/norm_rf"),
        "classwise rho": run.metrics.get(f"{prefix}/classwise_spearman"),
        "elementwise rho": run.metrics.get(f"{prefix}/elementwise_spearman"),
    }
    scores = ", ".join(f"{k} {'n/a' if v is None else f'{v:.3f}'}" for k, v in values.items())
    class_ids, distances = run.class_distances
    linkage_name = run.config.evaluate.tree_linkage
    title = f"{linkage_name.upper()} of {KIND_NAMES[run.class_kind]} vs the true tree: {scores}"
    return draw_tree_comparison(
        distances, _subtree(tree, class_ids), title=_title(figure, title), linkage_name=linkage_name
    )


def _retrieval_examples(experiment: Experiment, figure: Figure) -> Any:
    run = _first_run(experiment, figure)
    _, tree = experiment.dataset(run)
    evaluated = run.subset(run.config.evaluate.subset)
    embedding = run.embeddings.embedding[evaluated]
    labels = run.embeddings.label[evaluated]
    ids = run.embeddings.sample_id[evaluated]
    distance = run.config.evaluate.distance
    examples = retrieval_examples(
        embedding,
        labels,
        distance=distance,
        curvature=distance_curvature(run.config, distance),
        seed=run.config.seed,
    )
    paths = experiment.image_paths(run)
    rows = []
    for query, neighbours in examples:
        tiles = [Tile(paths[ids[query]], tree.classes[labels[query]])]
        tiles += [
            Tile(paths[ids[n]], tree.classes[labels[n]], bool(labels[n] == labels[query]))
            for n in neighbours
        ]
        rows.append((f"query {ids[query]}", tiles))
    subset = run.config.evaluate.subset
    return draw_image_grid(rows, title=_title(figure, f"{subset} queries and their top-4"))


def _boundary_proxies(experiment: Experiment, figure: Figure) -> Any:
    run = _first_run(experiment, figure)
    _, tree = experiment.dataset(run)
    train = run.subset("train")
    ids, labels = run.embeddings.sample_id[train], run.embeddings.label[train]
    _, proxies = run.vectors("hier_proxy")
    neighbours = boundary_proxy_neighbours(
        proxies, run.embeddings.embedding[train], run.config.head.curvature
    )
    paths = experiment.image_paths(run)
    rows = [
        (
            f"proxy {index}\n|p| = {norm:.2f} R",
            [Tile(paths[ids[n]], tree.classes[labels[n]]) for n in nearest],
        )
        for index, norm, nearest in neighbours
    ]
    title = "hierarchical proxies nearest the boundary, each with its 4 nearest training images"
    return draw_image_grid(rows, title=_title(figure, title))


def _training_curves(experiment: Experiment, figure: Figure) -> Any:
    logs = {}
    for run_id in figure.runs:
        run = experiment.run(figure.dataset, run_id)
        logs[f"seed {run.config.seed}"] = run.training_log
    return draw_line_panels(training_panels(logs), title=_title(figure, "training curves"))


def _affinity(experiment: Experiment, figure: Figure) -> Any:
    """Every model's matrix over the classes all of them represent."""
    runs = [experiment.run(figure.dataset, run_id) for run_id in figure.runs]
    tree = experiment.dataset(runs[0])[1]
    matrices = {_row_label(run): run.class_distances for run in runs}
    common = np.arange(tree.num_classes)
    for class_ids, _ in matrices.values():
        common = np.intersect1d(common, class_ids)
    if len(common) < 2:
        raise HierpipeError(f"{figure.stem}: the models represent fewer than two classes in common")
    panels = [("true tree", tree.distance_matrix()[np.ix_(common, common)])]
    for name, (class_ids, distances) in matrices.items():
        keep = np.searchsorted(class_ids, common)
        panels.append((name, distances[np.ix_(keep, keep)]))
    title = f"{figure.dataset}: class affinity (-distance of class representatives)"
    return draw_affinity_matrices(panels, _subtree(tree, common), title=title)


def _subtree(tree: ClassTree, class_ids: np.ndarray) -> ClassTree:
    """The true tree restricted to `class_ids`, renumbered 0.. in their order."""
    if np.array_equal(class_ids, np.arange(tree.num_classes)):
        return tree
    return ClassTree.from_paths([tree.paths[i] for i in class_ids])


def _row_label(run: Run) -> str:
    return f"{run.config.model} ({run.config.option})"


def _summary_rows(experiment: Experiment, dataset: str) -> pd.DataFrame:
    summary = experiment.summary
    return summary[summary["dataset"] == dataset]


def _hs_curves(experiment: Experiment, figure: Figure) -> Any:
    rows = _summary_rows(experiment, figure.dataset)
    columns = {
        int(c.removeprefix("retrieval/hs@").removesuffix("/mean")): c
        for c in rows.columns
        if c.startswith("retrieval/hs@") and c.endswith("/mean")
    }
    curves = {
        f"{row['model']} ({row['option']})": {k: row[c] for k, c in sorted(columns.items())}
        for _, row in rows.iterrows()
    }
    title = f"{figure.dataset}: hierarchical similarity of the top-k retrieved (mean over seeds)"
    return draw_line_panels([hs_curve_panel(curves)], title=title)


def _recall_vs_dimension(experiment: Experiment, figure: Figure) -> Any:
    rows = _summary_rows(experiment, figure.dataset)
    curves: dict[str, dict[int, float]] = {}
    for _, row in rows.iterrows():
        # one line per method, backbone family and option set, across dimensions
        name = (
            f"{method_name(row['loss'], row['regularizer'])} {architecture_family(row['backbone'])}"
        )
        if row["option"] != "standard":
            name += f" ({row['option']})"
        curves.setdefault(name, {})[int(row["embedding_dim"])] = row["retrieval/recall@1/mean"]
    title = f"{figure.dataset}: R@1 against embedding dimension"
    return draw_line_panels([dimension_panel(curves)], title=title)


DRAWERS: dict[str, Callable[[Experiment, Figure], Any]] = {
    "embedding_map": _embedding_map,
    "tree_comparison": _tree_comparison,
    "retrieval_examples": _retrieval_examples,
    "boundary_proxies": _boundary_proxies,
    "training_curves": _training_curves,
    "affinity": _affinity,
    "hs_curves": _hs_curves,
    "recall_vs_dimension": _recall_vs_dimension,
}
