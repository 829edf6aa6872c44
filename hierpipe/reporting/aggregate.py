"""Tables across runs: one row per (dataset, model, option) with, for every measure, the mean,
sd and confidence interval over seeds and a mark on the best value of each column."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from hierpipe.core import catalog
from hierpipe.core.atomic import write_text_atomic
from hierpipe.core.errors import HierpipeError
from hierpipe.core.io import write_parquet_atomic
from hierpipe.evaluation.metrics_file import read_metrics
from hierpipe.reporting.statistics import mean_confidence_interval

KEYS = ["dataset", "model", "option"]
# Run attributes the summary keeps beside the statistics (the same for every seed of a row).
ROW_ATTRIBUTES = [
    "trained",
    "proxies_from_hierarchy",
    "loss",
    "regularizer",
    "backbone",
    "embedding_dim",
    "space",
]
RUN_COLUMNS = [*KEYS, "seed", "run", *ROW_ATTRIBUTES]

# The summary's tables: title -> the measures it shows (column titles: hierpipe.core.catalog
# MEASURES). Every measure is in summary.csv.
SECTIONS = {
    "Classification by the model's classifier": (
        "classification/logits/top1",
        "classification/logits/top5",
        "classification/logits/ahc",
        "classification/logits/ahd@5",
        "classification/logits/hp@5",
        "classification/logits/hp@5_devise",
        "classification/logits/ece",
    ),
    "Classification by the nearest class prototype": (
        "classification/prototype/top1",
        "classification/prototype/ahc",
        "classification/prototype/ahd@5",
        "classification/prototype/hp@5",
        "classification/prototype/hp@5_devise",
    ),
    "Hierarchical inference: proxies vs the true tree": (
        "hierarchy/proxy/classwise_spearman",
        "hierarchy/proxy/classwise_spearman_noself",
        "hierarchy/proxy/elementwise_spearman",
        "hierarchy/proxy/norm_rf",
    ),
    "Hierarchical inference: prototypes vs the true tree": (
        "hierarchy/prototype/classwise_spearman",
        "hierarchy/prototype/classwise_spearman_noself",
        "hierarchy/prototype/elementwise_spearman",
        "hierarchy/prototype/norm_rf",
        "hierarchy/random_vectors/classwise_spearman",
    ),
    "Hierarchical inference: class prototypes in the Poincaré ball vs the true tree": (
        "hierarchy/ball_prototype/classwise_spearman",
        "hierarchy/ball_prototype/classwise_spearman_noself",
        "hierarchy/ball_prototype/elementwise_spearman",
        "hierarchy/ball_prototype/norm_rf",
    ),
    "Hierarchical proxies (HIER) vs the true tree": (
        "hierarchy/hier_proxy/lca_classwise_spearman",
        "hierarchy/hier_proxy/lca_elementwise_spearman",
        "hierarchy/hier_proxy/induced_classwise_spearman",
        "hierarchy/hier_proxy/induced_norm_rf",
        "hierarchy/hier_proxy/induced_internal_nodes",
    ),
    "Retrieval": (
        "retrieval/recall@1",
        "retrieval/map@r",
        "retrieval/hs@1",
        "retrieval/ahs",
        "retrieval/h_ap",
        "retrieval/asi",
        "retrieval/ndcg",
    ),
}


def _column_title(measure: str) -> str:
    """A measure's column title in a section of the summary, whose title says the kind."""
    label = catalog.measure(measure).label
    kind = measure.split("/")[1]
    return f"chance: {label} of random vectors" if kind == catalog.CHANCE_KIND else label


def collect_runs(metrics_paths: Sequence[str | Path]) -> pd.DataFrame:
    """One row per run: its keys, seed and every measure (NaN where a run lacks it)."""
    if not metrics_paths:
        raise HierpipeError("aggregate: no metrics files given")
    rows = []
    for path in metrics_paths:
        document = read_metrics(path)
        rows.append(
            {
                "dataset": document["dataset"],
                "model": document["model"],
                "seed": document["seed"],
                "run": document["run"],
                "option": document["option"],
                "trained": document["trained"],
                "proxies_from_hierarchy": document["proxies_from_hierarchy"],
                **{key: document.get(key) for key in ROW_ATTRIBUTES[2:]},
                **{k: (float("nan") if v is None else v) for k, v in document["metrics"].items()},
            }
        )
    runs = pd.DataFrame(rows)
    duplicated = runs.duplicated(["dataset", "run"])
    if duplicated.any():
        raise HierpipeError(
            f"aggregate: run(s) given twice: {runs.loc[duplicated, 'run'].tolist()}"
        )
    return runs.sort_values([*KEYS, "seed"], kind="stable").reset_index(drop=True)


def summarize(runs: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per (dataset, model, option) and measure: mean, sample sd, the t-interval of the mean
    at `confidence` (NaN below two seeds), and `best`, the best mean of its dataset's column.

    The best is sought among learned models only: the untrained baseline is not a candidate,
    and neither are proxies fitted to the true tree (MDS), whose hierarchy scores measure the
    fit. Measures that are not scores (direction 0 in hierpipe.core.catalog.MEASURES) have no best.
    """
    measures = [c for c in runs.columns if c not in RUN_COLUMNS]
    rows = []
    for keys, group in runs.groupby(KEYS, sort=False):
        row = dict(zip(KEYS, keys, strict=True))
        row["n_seeds"] = group["seed"].nunique()
        row["trained"] = bool(group["trained"].all())
        row["proxies_from_hierarchy"] = bool(group["proxies_from_hierarchy"].all())
        row.update({key: group[key].iloc[0] for key in ROW_ATTRIBUTES[2:]})
        for measure in measures:
            interval = mean_confidence_interval(group[measure].to_numpy(float), confidence)
            row[f"{measure}/mean"] = interval.mean
            row[f"{measure}/sd"] = interval.sd
            row[f"{measure}/ci_low"] = interval.low
            row[f"{measure}/ci_high"] = interval.high
        rows.append(row)
    summary = pd.DataFrame(rows)
    candidate = summary["trained"] & ~summary["proxies_from_hierarchy"]
    best = {f"{m}/best": _best_in_dataset(summary, m, candidate) for m in measures}
    summary = pd.concat([summary, pd.DataFrame(best, index=summary.index)], axis=1)
    ordered = [*KEYS, "n_seeds", *ROW_ATTRIBUTES] + [
        f"{m}/{stat}" for m in measures for stat in STATISTICS
    ]
    return summary[ordered]


STATISTICS = ("mean", "sd", "ci_low", "ci_high", "best")


def _best_in_dataset(summary: pd.DataFrame, measure: str, candidate: pd.Series) -> pd.Series:
    sign = catalog.measure_direction(measure)
    if sign == 0:
        return pd.Series(False, index=summary.index)
    score = summary[f"{measure}/mean"].where(candidate) * sign
    top = score.groupby(summary["dataset"]).transform("max")
    return score.notna() & (score == top)


# The few means per model that `dvc metrics show` lists (the headline file).
HEADLINE_MEASURES = (
    "classification/logits/top1",
    "retrieval/recall@1",
    "hierarchy/prototype/classwise_spearman",
)


def headline_metrics(summary: pd.DataFrame) -> dict[str, dict[str, dict[str, float]]]:
    """{dataset: {"model (option)": {measure: mean over seeds}}}, undefined measures left out."""
    headline: dict[str, dict[str, dict[str, float]]] = {}
    for _, row in summary.iterrows():
        values = {
            measure: float(row[f"{measure}/mean"])
            for measure in HEADLINE_MEASURES
            if f"{measure}/mean" in row and pd.notna(row[f"{measure}/mean"])
        }
        headline.setdefault(row["dataset"], {})[f"{row['model']} ({row['option']})"] = values
    return headline


def aggregate(
    metrics_paths: Sequence[str | Path],
    out_dir: str | Path,
    headline: str | Path | None = None,
    params: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Write the experiment's tables into `out_dir`: summary, paired comparisons (the
    questions of `params`) and the Table-1-style retrieval table, each as Parquet/CSV and
    Markdown; summary.md last (it marks the step done). With `headline`, a JSON file of the
    headline means (DVC's metrics file)."""
    from hierpipe.core.questions import questions_from_params, statistics_settings
    from hierpipe.reporting.comparisons import compare, comparisons_markdown
    from hierpipe.reporting.retrieval_table import retrieval_markdown, retrieval_table

    params = params or {}
    settings = statistics_settings(params)
    questions = questions_from_params(params)
    out_dir = Path(out_dir)
    runs = collect_runs(metrics_paths)
    summary = summarize(runs, settings.confidence)
    comparisons = compare(runs, questions, settings)
    retrieval = retrieval_table(summary)
    if headline is not None:
        document = json.dumps(headline_metrics(summary), indent=2, sort_keys=True)
        write_text_atomic(document + "\n", headline)
    for name, table in (("comparisons", comparisons), ("retrieval_table", retrieval)):
        write_parquet_atomic(table, out_dir / f"{name}.parquet")
        write_text_atomic(table.to_csv(index=False), out_dir / f"{name}.csv")
    write_text_atomic(
        comparisons_markdown(comparisons, questions, settings), out_dir / "comparisons.md"
    )
    write_text_atomic(retrieval_markdown(retrieval), out_dir / "retrieval_table.md")
    write_parquet_atomic(summary, out_dir / "summary.parquet")
    write_text_atomic(summary.to_csv(index=False), out_dir / "summary.csv")
    write_text_atomic(to_markdown(summary, settings.confidence), out_dir / "summary.md")
    return summary


def to_markdown(summary: pd.DataFrame, confidence: float = 0.95) -> str:
    lines = [
        "# Summary",
        "",
        f"Mean ± sd [{confidence:.0%} confidence interval] over seeds (sd and interval need "
        "two seeds or more); n/a = not defined. **Bold**: the best mean of the column among "
        "learned models (not the untrained baseline, not proxies fitted to the tree).",
        "",
    ]
    for dataset, table in summary.groupby("dataset", sort=False):
        lines += [f"## {dataset}", ""]
        names = [_run_name(row) for _, row in table.iterrows()]
        for title, section in SECTIONS.items():
            shown = [m for m in section if f"{m}/mean" in table.columns]
            rows = [
                [name, str(row["n_seeds"]), *(_cell(row, m) for m in shown)]
                for name, (_, row) in zip(names, table.iterrows(), strict=True)
                # a model without any of the section's measures (no HIER proxies) is left out
                if shown and row[[f"{m}/mean" for m in shown]].notna().any()
            ]
            if not rows:
                continue
            lines += [f"### {title}", ""]
            lines += _markdown_table(["model", "seeds", *map(_column_title, shown)], rows)
            lines.append("")
        if table["proxies_from_hierarchy"].any():
            lines += [
                "\\* proxies fitted to the true tree (MDS): their hierarchy scores measure that "
                "fit, not learning.",
                "",
            ]
        lines += _baseline_comparison(table, names)
        measures = [c.removesuffix("/mean") for c in table.columns if c.endswith("/mean")]
        lines += ["", "<details><summary>All measures</summary>", ""]
        lines += _markdown_table(
            ["measure", *names],
            [[m, *(_cell(row, m) for _, row in table.iterrows())] for m in measures],
        )
        lines += ["", "</details>", ""]
    return "\n".join(lines) + "\n"


def _run_name(row: pd.Series) -> str:
    name = f"{row['model']} ({row['option']})"
    return f"{name} \\*" if row["proxies_from_hierarchy"] else name


# Measures on which a trained model should beat the untrained random-weights backbone; the
# baseline has no classifier, so its hierarchy is judged by its class prototypes.
BASELINE_MEASURES = ("retrieval/recall@1", "hierarchy/prototype/classwise_spearman")


def _baseline_comparison(table: pd.DataFrame, names: list[str]) -> list[str]:
    """Each trained model minus the untrained baseline (ProxyDR's random-weights question)."""
    baselines = table[~table["trained"]]
    if baselines.empty:
        return []
    baseline = baselines.iloc[0]
    measures = [m for m in BASELINE_MEASURES if f"{m}/mean" in table.columns]
    lines = [
        f"### Against the untrained baseline `{baseline['model']}`",
        "",
        "Difference of means; positive = better than random weights.",
        "",
    ]
    rows = []
    for name, (_, row) in zip(names, table.iterrows(), strict=True):
        if not row["trained"]:
            continue
        deltas = [row[f"{m}/mean"] - baseline[f"{m}/mean"] for m in measures]
        verdict = "yes" if all(d > 0 for d in deltas) else "no"
        rows.append([name, *(f"{d:+.4f}" for d in deltas), verdict])
    header = [
        "model",
        *(f"Δ {catalog.measure_label(m)}" for m in measures),
        "beats baseline on all",
    ]
    return lines + _markdown_table(header, rows)


def _cell(row: pd.Series, measure: str) -> str:
    mean, sd = row[f"{measure}/mean"], row[f"{measure}/sd"]
    if pd.isna(mean):
        return "n/a"
    text = f"{mean:.4f}"
    if pd.notna(sd):
        text += f" ± {sd:.4f} [{row[f'{measure}/ci_low']:.4f}, {row[f'{measure}/ci_high']:.4f}]"
    return f"**{text}**" if row.get(f"{measure}/best", False) else text


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
