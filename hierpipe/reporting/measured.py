"""The tables and the tree figure of embeddings measured by `hierpipe measure`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hierpipe.core.geometry import pairwise_distances
from hierpipe.data.tables import read_classes
from hierpipe.evaluation.embedding_files import read_representatives
from hierpipe.evaluation.metrics_file import read_metrics
from hierpipe.reporting.aggregate import aggregate
from hierpipe.reporting.plots.canvas import save_figure
from hierpipe.reporting.plots.dendrogram import draw_tree_comparison


def report_measured(metrics_path: str | Path, out_dir: str | Path, curvature: float) -> None:
    """summary.md/.csv/.parquet (and the other tables of `hierpipe aggregate`) and
    figures/tree_comparison.png/.pdf in `out_dir`: the tree the class representatives give,
    by the measured linkage, beside the true tree."""
    out_dir = Path(out_dir)
    aggregate([metrics_path], out_dir)
    tree = read_classes(out_dir)
    representatives = read_representatives(out_dir / "representatives.parquet")
    kind = representatives["kind"].iloc[0]
    chosen = representatives[representatives["kind"] == kind].sort_values("class_id")
    if len(chosen) != tree.num_classes or tree.num_classes < 2:
        return  # a tree figure needs every class's representative
    vectors = torch.from_numpy(np.stack(chosen["vector"].to_numpy()).astype(np.float64))
    metric = "poincare" if kind == "ball_prototype" else "chord"
    distances = pairwise_distances(
        vectors, vectors, metric, curvature if metric == "poincare" else None
    ).numpy()
    np.fill_diagonal(distances, 0.0)
    rf = read_metrics(metrics_path)["metrics"].get(f"hierarchy/{kind}/norm_rf")
    title = f"{kind} vs the true tree: RF {'n/a' if rf is None else f'{rf:.3f}'}"
    figure = draw_tree_comparison(distances, tree, title=title)
    save_figure(figure, out_dir / "figures" / "tree_comparison")
