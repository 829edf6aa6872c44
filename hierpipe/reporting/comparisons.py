"""Paired comparisons across seeds, one table per question the params ask.

A question names a treatment and a control by model and/or option set, the way the ProxyDR
study asks them ("ProxyDR vs NormFace under the same training option", "EMA vs standard
for the same model") and HIER's ("Proxy Anchor + HIER vs Proxy Anchor"):

    comparisons:
      - name: ProxyDR vs NormFace, same option set
        treatment: {model: proxydr}
        control: {model: normface}

Each treatment row (dataset, model, option) is paired with the control row that has the
same dataset and the same value of every key the control does not name; runs are then
paired by seed, since a seed fixes the initial weights and the batch order of both. Every
(pair of rows, measure) is one test: paired t-test and Wilcoxon signed-rank p-values, the
mean difference with its confidence interval and Cohen's d_z, with p-values corrected for
multiple comparisons over all tests of the question.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from hierpipe.core import catalog
from hierpipe.core.questions import Question, StatisticsSettings
from hierpipe.reporting.statistics import adjust_p_values, paired_t_test, wilcoxon_signed_rank

COLUMNS = [
    "question",
    "dataset",
    "treatment",
    "control",
    "measure",
    "higher_is_better",
    "n",
    "treatment_mean",
    "control_mean",
    "difference",
    "sd_difference",
    "ci_low",
    "ci_high",
    "effect_size",
    "t",
    "p_t",
    "p_t_adjusted",
    "wilcoxon_statistic",
    "p_wilcoxon",
    "p_wilcoxon_adjusted",
]


def compare(
    runs: pd.DataFrame, questions: Sequence[Question], settings: StatisticsSettings
) -> pd.DataFrame:
    """One row per (question, dataset, treatment row, measure); `runs` as collect_runs gives.

    Measures a pair does not define on either side (NaN for every seed) are left out; p-values
    are adjusted within each question, over the tests that have one.
    """
    tables = [_question_table(runs, q, settings) for q in questions]
    tables = [t for t in tables if not t.empty]
    if not tables:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(tables, ignore_index=True)[COLUMNS]


def _question_table(
    runs: pd.DataFrame, question: Question, settings: StatisticsSettings
) -> pd.DataFrame:
    rows = []
    for (dataset, model, option), treated in runs.groupby(
        ["dataset", "model", "option"], sort=False
    ):
        keys = {"model": model, "option": option}
        if not all(keys[k] in allowed for k, allowed in question.treatment.items()):
            continue
        control_keys = {**keys, **question.control}
        if control_keys == keys:
            continue  # a row is not compared with itself
        controls = runs[
            (runs["dataset"] == dataset)
            & (runs["model"] == control_keys["model"])
            & (runs["option"] == control_keys["option"])
        ]
        paired = treated.merge(controls, on="seed", suffixes=("", "/control"))
        for measure in question.measures:
            if measure not in runs.columns:
                continue
            treatment_values = paired[measure].to_numpy(float)
            control_values = paired[f"{measure}/control"].to_numpy(float)
            finite = np.isfinite(treatment_values) & np.isfinite(control_values)
            if not finite.any():
                continue
            rows.append(
                _test_row(treatment_values[finite], control_values[finite], settings.confidence)
                | {
                    "question": question.name,
                    "dataset": dataset,
                    "treatment": f"{model} ({option})",
                    "control": f"{control_keys['model']} ({control_keys['option']})",
                    "measure": measure,
                    "higher_is_better": catalog.measure_direction(measure) >= 0,
                }
            )
    table = pd.DataFrame(rows, columns=COLUMNS)
    for column in ("p_t", "p_wilcoxon"):
        table[f"{column}_adjusted"] = adjust_p_values(
            table[column].to_numpy(float), settings.correction
        )
    return table


def _test_row(treatment: np.ndarray, control: np.ndarray, confidence: float) -> dict[str, Any]:
    t_test = paired_t_test(treatment, control, confidence=confidence)
    signed_rank = wilcoxon_signed_rank(treatment, control)
    return {
        "n": t_test.n,
        "treatment_mean": float(treatment.mean()),
        "control_mean": float(control.mean()),
        "difference": t_test.mean_difference,
        "sd_difference": t_test.sd_difference,
        "ci_low": t_test.ci_low,
        "ci_high": t_test.ci_high,
        "effect_size": t_test.effect_size,
        "t": t_test.t,
        "p_t": t_test.p,
        "wilcoxon_statistic": signed_rank.statistic,
        "p_wilcoxon": signed_rank.p,
    }


def comparisons_markdown(
    table: pd.DataFrame, questions: Sequence[Question], settings: StatisticsSettings
) -> str:
    lines = [
        "# Paired comparisons",
        "",
        "Runs paired by seed. Δ = treatment - control, mean over pairs with its "
        f"{settings.confidence:.0%} confidence interval; d_z = mean / sd of the differences "
        "(Cohen's effect size for paired data); p = two-sided paired t-test and Wilcoxon "
        f"signed-rank p-values, adjusted for multiple comparisons ({settings.correction}) over "
        "all tests of the question. With n pairs the smallest Wilcoxon p is 2 / 2^n "
        "(0.25 for 3 seeds), so few seeds cannot reach significance by that test.",
        "",
    ]
    if not questions:
        return "\n".join([*lines, "No comparisons are declared in params (`comparisons:`).", ""])
    for question in questions:
        rows = table[table["question"] == question.name]
        lines += [f"## {question.name}", ""]
        if rows.empty:
            lines += ["No pair of runs matches this question.", ""]
            continue
        header = ["dataset", "treatment", "control", "measure", "n", "Δ [CI]", "d_z"]
        header += ["p (t-test, adj.)", "p (Wilcoxon, adj.)"]
        body = [
            [
                row.dataset,
                row.treatment,
                row.control,
                catalog.measure_label(row.measure)
                + ("" if row.higher_is_better else " (lower is better)"),
                str(row.n),
                _difference(row),
                _number(row.effect_size, "{:+.2f}"),
                _p_value(row.p_t, row.p_t_adjusted),
                _p_value(row.p_wilcoxon, row.p_wilcoxon_adjusted),
            ]
            for row in rows.itertuples()
        ]
        lines += [
            "| " + " | ".join(header) + " |",
            "|" + "---|" * len(header),
            *("| " + " | ".join(cells) + " |" for cells in body),
            "",
        ]
    return "\n".join(lines) + "\n"


def _number(value: float, form: str) -> str:
    return "n/a" if pd.isna(value) else form.format(value)


def _difference(row: Any) -> str:
    if pd.isna(row.ci_low):
        return f"{row.difference:+.4f}"
    return f"{row.difference:+.4f} [{row.ci_low:+.4f}, {row.ci_high:+.4f}]"


def _p_value(raw: float, adjusted: float) -> str:
    if pd.isna(raw):
        return "n/a"
    return f"{raw:.3g} ({adjusted:.3g})"
