"""The tables and figures of embeddings measured by `hierpipe measure`: those of a run that
need neither images nor training, drawn by the run figures' own drawers."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hierpipe.core.hierarchy import ClassTree
from hierpipe.data.tables import read_classes
from hierpipe.reporting.aggregate import aggregate
from hierpipe.reporting.plots.canvas import save_figure
from hierpipe.reporting.plots.plan import Figure
from hierpipe.reporting.plots.render import DRAWERS, Experiment, Run

# a run's figures that measured embeddings can have: no images, no training log
MEASURED_FIGURES = ("embedding_map", "tree_comparison", "affinity", "hs_curves")


class _MeasuredExperiment(Experiment):
    """`hierpipe measure`'s output folder as an experiment of one run."""

    def __init__(self, out_dir: Path) -> None:
        super().__init__(out_dir)
        self.only = Run(out_dir)

    def run(self, dataset: str, run_id: str) -> Run:
        return self.only

    def dataset(self, run: Run) -> tuple[pd.DataFrame, ClassTree]:
        return pd.DataFrame(), read_classes(self.results)


def report_measured(metrics_path: str | Path, out_dir: str | Path) -> list[Path]:
    """summary.md/.csv/.parquet (and the other tables of `hierpipe aggregate`) and, under
    `out_dir`/figures, the run figures of MEASURED_FIGURES; returns the figure files."""
    out_dir = Path(out_dir)
    aggregate([metrics_path], out_dir)
    experiment = _MeasuredExperiment(out_dir)
    config = experiment.only.config
    written = []
    for kind in MEASURED_FIGURES:
        figure = Figure(
            kind,
            config.dataset,
            f"figures/{kind}",
            config.model,
            config.option,
            (config.run_id,),
        )
        written += save_figure(DRAWERS[kind](experiment, figure), out_dir / figure.stem)
    return written
