"""Tables across runs: one row per (dataset, model), mean and sd of every measure over seeds."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from hierpipe.errors import HierpipeError
from hierpipe.evaluate import read_metrics
from hierpipe.io import write_parquet_atomic, write_text_atomic

KEYS = ["dataset", "model", "option"]
RUN_COLUMNS = [
    *KEYS,
    "seed",
    "run",
    "trained",
    "proxies_from_hierarchy",
    "loss",
    "regularizer",
]

# The summary's tables: title -> {measure: column title}. Every measure is in summary.csv.
SECTIONS = {
    "Classification by the model's classifier": {
        "classification/logits/top1": "top-1",
        "classification/logits/top5": "top-5",
        "classification/logits/ahc": "AHC",
        "classification/logits/ahd@5": "AHD@5",
        "classification/logits/hp@5": "HP@5",
        "classification/logits/hp@5_devise": "HP@5 (DeViSE)",
        "classification/logits/ece": "ECE",
    },
    "Classification by the nearest class prototype": {
        "classification/prototype/top1": "top-1",
        "classification/prototype/ahc": "AHC",
        "classification/prototype/ahd@5": "AHD@5",
        "classification/prototype/hp@5": "HP@5",
        "classification/prototype/hp@5_devise": "HP@5 (DeViSE)",
    },
    "Hierarchical inference: proxies vs the true tree": {
        "hierarchy/proxy/classwise_spearman": "classwise rho",
        "hierarchy/proxy/classwise_spearman_noself": "classwise rho, no self",
        "hierarchy/proxy/elementwise_spearman": "elementwise rho",
        "hierarchy/proxy/norm_rf": "RF (normalised)",
    },
    "Hierarchical inference: prototypes vs the true tree": {
        "hierarchy/prototype/classwise_spearman": "classwise rho",
        "hierarchy/prototype/classwise_spearman_noself": "classwise rho, no self",
        "hierarchy/prototype/elementwise_spearman": "elementwise rho",
        "hierarchy/prototype/norm_rf": "RF (normalised)",
        "hierarchy/random_vectors/classwise_spearman": "chance: classwise rho of random vectors",
    },
    "Hierarchical inference: class prototypes in the Poincaré ball vs the true tree": {
        "hierarchy/ball_prototype/classwise_spearman": "classwise rho",
        "hierarchy/ball_prototype/classwise_spearman_noself": "classwise rho, no self",
        "hierarchy/ball_prototype/elementwise_spearman": "elementwise rho",
        "hierarchy/ball_prototype/norm_rf": "RF (normalised)",
    },
    "Hierarchical proxies (HIER) vs the true tree": {
        "hierarchy/hier_proxy/lca_classwise_spearman": "LCA-distance classwise rho",
        "hierarchy/hier_proxy/lca_elementwise_spearman": "LCA-distance elementwise rho",
        "hierarchy/hier_proxy/induced_classwise_spearman": "induced-tree classwise rho",
        "hierarchy/hier_proxy/induced_norm_rf": "induced-tree RF (normalised)",
        "hierarchy/hier_proxy/induced_internal_nodes": "proxies in the induced tree",
    },
    "Retrieval": {
        "retrieval/recall@1": "R@1",
        "retrieval/map@r": "MAP@R",
        "retrieval/hs@1": "HS@1",
        "retrieval/ahs": "AHS",
    },
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
                "option": document["option"],
                "trained": document["trained"],
                "proxies_from_hierarchy": document["proxies_from_hierarchy"],
                "loss": document.get("loss"),
                "regularizer": document.get("regularizer"),
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
    flags = runs.groupby(KEYS, sort=False)[["trained", "proxies_from_hierarchy"]].all()
    summary = summary.join(flags)
    ordered = ["n_seeds", "trained", "proxies_from_hierarchy"] + [
        f"{m}/{stat}" for m in measures for stat in ("mean", "sd")
    ]
    return summary[ordered].reset_index()


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
    metrics_paths: Sequence[str | Path], out_dir: str | Path, headline: str | Path | None = None
) -> pd.DataFrame:
    """Write summary.parquet, summary.csv and summary.md (the last one last: it marks done),
    and with `headline` a JSON file of the headline means (DVC's metrics file)."""
    out_dir = Path(out_dir)
    runs = collect_runs(metrics_paths)
    summary = summarize(runs)
    if headline is not None:
        document = json.dumps(headline_metrics(summary), indent=2, sort_keys=True)
        write_text_atomic(document + "\n", headline)
    write_parquet_atomic(summary, out_dir / "summary.parquet")
    write_text_atomic(summary.to_csv(index=False), out_dir / "summary.csv")
    write_text_atomic(to_markdown(summary, runs), out_dir / "summary.md")
    return summary


def to_markdown(summary: pd.DataFrame, runs: pd.DataFrame) -> str:
    lines = [
        "# Summary",
        "",
        "Mean ± sd over seeds (sd omitted for one seed); n/a = not defined.",
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
            lines += _markdown_table(["model", "seeds", *(section[m] for m in shown)], rows)
            lines.append("")
        if table["proxies_from_hierarchy"].any():
            lines += [
                "\\* proxies fitted to the true tree (MDS): their hierarchy scores measure that "
                "fit, not learning.",
                "",
            ]
        lines += _baseline_comparison(table, names)
        lines += _regularizer_comparison(runs[runs["dataset"] == dataset])
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
BASELINE_MEASURES = {
    "retrieval/recall@1": "R@1",
    "hierarchy/prototype/classwise_spearman": "classwise rho (prototype)",
}


REGULARIZER_MEASURES = {
    "hierarchy/prototype/classwise_spearman": "classwise rho (prototype)",
    "hierarchy/prototype/elementwise_spearman": "elementwise rho (prototype)",
    "retrieval/recall@1": "R@1",
    "retrieval/ahs": "AHS",
}


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
    header = ["model", *(f"Δ {BASELINE_MEASURES[m]}" for m in measures), "beats baseline on all"]
    return lines + _markdown_table(header, rows)


def _regularizer_comparison(runs: pd.DataFrame) -> list[str]:
    """Each regularised model minus the model with the same loss and options without one.

    Paired by seed, since a seed fixes initial weights and batch order for both; a model is
    compared only when exactly one unregularised model shares its loss and option set.
    """
    measures = [m for m in REGULARIZER_MEASURES if m in runs.columns]
    plain = runs[runs["trained"] & runs["regularizer"].isna()]
    rows = []
    for (model, option), group in runs[runs["regularizer"].notna()].groupby(
        ["model", "option"], sort=False
    ):
        loss = group["loss"].iloc[0]
        bases = plain[(plain["loss"] == loss) & (plain["option"] == option)]
        if bases["model"].nunique() != 1:
            continue
        paired = group.merge(bases, on="seed", suffixes=("", "_base"))
        if paired.empty:
            continue
        cells = []
        for m in measures:
            delta = paired[m] - paired[f"{m}_base"]
            spread = "" if len(delta) < 2 else f" ± {delta.std(ddof=1):.4f}"
            cells.append(f"{delta.mean():+.4f}{spread} ({int((delta > 0).sum())}/{len(delta)})")
        rows.append([f"{model} ({option})", bases["model"].iloc[0], str(len(paired)), *cells])
    if not rows:
        return []
    header = ["model", "without regulariser", "paired seeds"]
    header += [f"Δ {REGULARIZER_MEASURES[m]}" for m in measures]
    return [
        "",
        "### Against the same loss without the regulariser",
        "",
        "Mean ± sd over seeds of the paired differences; (k/n) = seeds where the regularised "
        "model is higher. Higher is better for every measure shown.",
        "",
        *_markdown_table(header, rows),
    ]


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
