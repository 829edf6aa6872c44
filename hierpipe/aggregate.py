"""Tables across runs: one row per (dataset, model), mean and sd of every measure over seeds."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from hierpipe.errors import HierpipeError
from hierpipe.evaluate import read_metrics
from hierpipe.io import write_parquet_atomic, write_text_atomic

KEYS = ["dataset", "model"]
RUN_COLUMNS = [*KEYS, "seed", "run", "trained"]

# The measures the summary's first table shows, with their column titles.
HEADLINE = {
    "classification/logits/top1": "top-1",
    "classification/prototype/top1": "top-1 (prototype)",
    "classification/logits/ahc": "AHC",
    "retrieval/recall@1": "R@1",
    "retrieval/map@r": "MAP@R",
    "hierarchy/proxy/classwise_spearman": "classwise rho (proxy)",
    "hierarchy/prototype/classwise_spearman": "classwise rho (prototype)",
    "hierarchy/prototype/classwise_spearman_noself": "classwise rho, no self (prototype)",
}


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
                "trained": document["trained"],
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


def summarize(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample sd (NaN for a single seed) of every measure, per (dataset, model)."""
    measures = [c for c in runs.columns if c not in RUN_COLUMNS]
    grouped = runs.groupby(KEYS, sort=False)[measures]
    summary = grouped.mean().add_suffix("/mean").join(grouped.std(ddof=1).add_suffix("/sd"))
    summary.insert(0, "n_seeds", runs.groupby(KEYS, sort=False)["seed"].nunique())
    summary.insert(1, "trained", runs.groupby(KEYS, sort=False)["trained"].all())
    ordered = ["n_seeds", "trained"] + [f"{m}/{stat}" for m in measures for stat in ("mean", "sd")]
    return summary[ordered].reset_index()


def aggregate(metrics_paths: Sequence[str | Path], out_dir: str | Path) -> pd.DataFrame:
    """Write summary.parquet, summary.csv and summary.md (the last one last: it marks done)."""
    out_dir = Path(out_dir)
    summary = summarize(collect_runs(metrics_paths))
    write_parquet_atomic(summary, out_dir / "summary.parquet")
    write_text_atomic(summary.to_csv(index=False), out_dir / "summary.csv")
    write_text_atomic(to_markdown(summary), out_dir / "summary.md")
    return summary


def to_markdown(summary: pd.DataFrame) -> str:
    lines = ["# Summary", ""]
    for dataset, table in summary.groupby("dataset", sort=False):
        lines += [f"## {dataset}", "", "Mean ± sd over seeds (sd omitted for one seed).", ""]
        headline = [m for m in HEADLINE if f"{m}/mean" in table.columns]
        lines += _markdown_table(
            ["model", "seeds", *(HEADLINE[m] for m in headline)],
            [
                [row["model"], str(row["n_seeds"]), *(_cell(row, m) for m in headline)]
                for _, row in table.iterrows()
            ],
        )
        lines += _baseline_comparison(table)
        measures = [c.removesuffix("/mean") for c in table.columns if c.endswith("/mean")]
        lines += ["", "<details><summary>All measures</summary>", ""]
        lines += _markdown_table(
            ["measure", *table["model"]],
            [[m, *(_cell(row, m) for _, row in table.iterrows())] for m in measures],
        )
        lines += ["", "</details>", ""]
    return "\n".join(lines) + "\n"


# Measures on which a trained model should beat the untrained random-weights backbone; the
# baseline has no classifier, so its hierarchy is judged by its class prototypes.
BASELINE_MEASURES = {
    "retrieval/recall@1": "R@1",
    "hierarchy/prototype/classwise_spearman": "classwise rho (prototype)",
}


def _baseline_comparison(table: pd.DataFrame) -> list[str]:
    """Each trained model minus the untrained baseline (ProxyDR's random-weights question)."""
    baselines = table[~table["trained"]]
    if baselines.empty:
        return []
    baseline = baselines.iloc[0]
    measures = [m for m in BASELINE_MEASURES if f"{m}/mean" in table.columns]
    lines = [
        "",
        f"Trained models against the untrained baseline `{baseline['model']}` "
        "(difference of means; positive = better than random weights):",
        "",
    ]
    rows = []
    for _, row in table[table["trained"]].iterrows():
        deltas = [row[f"{m}/mean"] - baseline[f"{m}/mean"] for m in measures]
        rows.append(
            [
                row["model"],
                *(f"{d:+.4f}" for d in deltas),
                "yes" if all(d > 0 for d in deltas) else "no",
            ]
        )
    header = ["model", *(f"Δ {BASELINE_MEASURES[m]}" for m in measures), "beats baseline on all"]
    return lines + _markdown_table(header, rows)


def _cell(row: pd.Series, measure: str) -> str:
    mean, sd = row[f"{measure}/mean"], row[f"{measure}/sd"]
    if pd.isna(mean):
        return "n/a"
    return f"{mean:.4f}" if pd.isna(sd) else f"{mean:.4f} ± {sd:.4f}"


def _markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
