"""Which figures an experiment has, decided from its params alone.

The workflow declares every figure as an output (and a report item with its caption) before
any job runs, and `hierpipe figures` renders exactly the same list, so both read it here.
Per (dataset, model, option) the figures show the first seed's run (training curves: every
seed); per dataset they compare the models.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hierpipe.core.config import grid, resolve_run_config, run_id

# Figure kinds: rendering group and report category. Each group is one job, so the two
# render side by side; the maps carry UMAP's import and layouts and the plots the retrieval
# examples' image grids (about 10 s each in the default experiment), so the training curves
# join the maps to even out the two jobs' times.
KINDS = {
    "embedding_map": ("maps", "Embeddings"),
    "tree_comparison": ("plots", "Learned trees"),
    "retrieval_examples": ("plots", "Retrieval examples"),
    "boundary_proxies": ("plots", "Hierarchical proxies"),
    "training_curves": ("maps", "Training curves"),
    "affinity": ("plots", "Class affinities"),
    "hs_curves": ("plots", "Hierarchical retrieval"),
    "recall_vs_dimension": ("plots", "Retrieval vs dimension"),
}
GROUPS = ("maps", "plots")
FORMATS = ("png", "pdf")


@dataclass(frozen=True)
class Figure:
    kind: str
    dataset: str
    stem: str  # path below results/<experiment>/, without the .png/.pdf extension
    model: str | None = None
    option: str | None = None
    runs: tuple[str, ...] = ()  # run ids it reads (first seed first); none: the summary

    @property
    def group(self) -> str:
        return KINDS[self.kind][0]

    @property
    def category(self) -> str:
        return KINDS[self.kind][1]

    @property
    def label(self) -> str:
        return "all models" if self.model is None else f"{self.model} ({self.option})"


def figure_plan(params: Mapping[str, Any]) -> list[Figure]:
    """Every figure of the experiment, in a stable order."""
    rows: dict[tuple[str, str, str], list[str]] = {}
    for dataset, model, option, seed in sorted(grid(params), key=lambda run: run[3]):
        rows.setdefault((dataset, model, option), []).append(run_id(model, option, seed))
    figures = []
    for dataset in params["datasets"]:
        entries = {k: v for k, v in rows.items() if k[0] == dataset}
        if not entries:
            continue
        # the affinity panels show each row's first seed; the curves read the summary
        first_seeds = tuple(runs[0] for runs in entries.values())
        figures += [
            Figure("affinity", dataset, f"figures/{dataset}/affinity", runs=first_seeds),
            Figure("hs_curves", dataset, f"figures/{dataset}/hs_curves"),
        ]
        dimensions = {resolve_run_config(params, *key, 0).backbone.embedding_dim for key in entries}
        if len(dimensions) > 1:
            stem = f"figures/{dataset}/recall_vs_dimension"
            figures.append(Figure("recall_vs_dimension", dataset, stem))
        for (_, model, option), runs in entries.items():
            config = resolve_run_config(params, dataset, model, option, 0)
            kinds = ["embedding_map", "tree_comparison", "retrieval_examples"]
            if config.trained:
                kinds.append("training_curves")
            if config.regularizer is not None and config.head.space == "poincare":
                kinds.append("boundary_proxies")
            for kind in kinds:
                shown = tuple(runs) if kind == "training_curves" else (runs[0],)
                stem = f"figures/{dataset}/{model}-{option}/{kind}"
                figures.append(Figure(kind, dataset, stem, model, option, shown))
    return figures
