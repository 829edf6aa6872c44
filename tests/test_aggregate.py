import json
import math

import numpy as np
import pandas as pd
import pytest

from hierpipe.aggregate import aggregate, collect_runs, summarize
from hierpipe.errors import HierpipeError


def _write_metrics(path, model, seed, metrics, loss=None, regularizer=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    document = {
        "loss": loss or model,
        "regularizer": regularizer,
        "run": f"{model}-s{seed}",
        "dataset": "toy",
        "model": model,
        "option": "standard",
        "seed": seed,
        "trained": model != "random",
        "proxies_from_hierarchy": False,
        "subset": "test",
        "metrics": metrics,
    }
    path.write_text(json.dumps(document))
    return path


@pytest.fixture
def metrics_files(tmp_path):
    values = {("proxydr", 1): 0.5, ("proxydr", 2): 0.7, ("proxydr", 3): 0.9, ("normface", 1): 0.4}
    return [
        _write_metrics(
            tmp_path / f"{m}-s{s}" / "metrics.json",
            m,
            s,
            {"retrieval/recall@1": v, "hierarchy/proxy/classwise_spearman": None},
        )
        for (m, s), v in values.items()
    ]


def test_mean_and_sample_sd_over_seeds(metrics_files):
    summary = summarize(collect_runs(metrics_files)).set_index("model")
    assert summary.loc["proxydr", "n_seeds"] == 3
    assert summary.loc["proxydr", "retrieval/recall@1/mean"] == pytest.approx(0.7)
    # sample sd of (0.5, 0.7, 0.9) = sqrt(((-0.2)^2 + 0 + 0.2^2) / 2) = 0.2
    assert summary.loc["proxydr", "retrieval/recall@1/sd"] == pytest.approx(0.2)
    assert math.isnan(summary.loc["normface", "retrieval/recall@1/sd"])
    assert math.isnan(summary.loc["proxydr", "hierarchy/proxy/classwise_spearman/mean"])


def test_aggregate_writes_tables_that_agree(metrics_files, tmp_path):
    out = tmp_path / "out"
    summary = aggregate(metrics_files, out)
    parquet = pd.read_parquet(out / "summary.parquet")
    csv = pd.read_csv(out / "summary.csv")
    pd.testing.assert_frame_equal(parquet, summary)
    np.testing.assert_allclose(csv["retrieval/recall@1/mean"], summary["retrieval/recall@1/mean"])
    markdown = (out / "summary.md").read_text()
    assert "| proxydr (standard) | 3 | 0.7000 ± 0.2000 |" in markdown  # retrieval table
    # a section needs a model with one of its measures; the table of all measures has all
    assert "### Hierarchical inference: proxies" not in markdown
    assert "| hierarchy/proxy/classwise_spearman | n/a | n/a |" in markdown
    assert "| normface (standard) | 1 | 0.4000 |" in markdown
    assert not list(out.glob(".*.tmp"))


def test_duplicate_run_is_refused(metrics_files):
    with pytest.raises(HierpipeError, match="given twice"):
        collect_runs([metrics_files[0], metrics_files[0]])


def test_corrupt_metrics_file_is_named(tmp_path):
    bad = tmp_path / "metrics.json"
    bad.write_text("{not json")
    with pytest.raises(HierpipeError, match=r"metrics\.json: not valid JSON"):
        collect_runs([bad])


def test_trained_models_are_compared_with_the_untrained_baseline(tmp_path):
    values = {"proxydr": (0.8, 0.40), "softmax": (0.5, 0.05), "random": (0.2, 0.10)}
    files = [
        _write_metrics(
            tmp_path / f"{model}/metrics.json",
            model,
            1,
            {"retrieval/recall@1": r1, "hierarchy/prototype/classwise_spearman": rho},
        )
        for model, (r1, rho) in values.items()
    ]
    aggregate(files, tmp_path / "out")
    markdown = (tmp_path / "out/summary.md").read_text()
    assert "untrained baseline `random`" in markdown
    assert "| proxydr (standard) | +0.6000 | +0.3000 | yes |" in markdown
    assert "| softmax (standard) | +0.3000 | -0.0500 | no |" in markdown


def test_regularised_model_is_compared_with_its_base_loss_seed_by_seed(tmp_path):
    rho = "hierarchy/prototype/classwise_spearman"
    values = {
        ("pa", 1): 0.30,
        ("pa", 2): 0.40,
        ("pa", 3): 0.50,
        ("pa_hier", 1): 0.35,
        ("pa_hier", 2): 0.38,
        ("pa_hier", 3): 0.60,
        ("ms_hier", 1): 0.9,  # no unregularised multi_similarity model: not compared
    }
    files = [
        _write_metrics(
            tmp_path / f"{m}-s{s}.json",
            m,
            s,
            {rho: v, "retrieval/recall@1": 0.5},
            loss="multi_similarity" if m.startswith("ms") else "proxy_anchor",
            regularizer="hier" if m.endswith("hier") else None,
        )
        for (m, s), v in values.items()
    ]
    aggregate(files, tmp_path / "out")
    markdown = (tmp_path / "out/summary.md").read_text()
    section = markdown.split("### Against the same loss without the regulariser")[1]
    section = section.split("<details>")[0]
    # paired differences +0.05, -0.02, +0.10: mean 0.0433, sample sd 0.0603, 2 of 3 higher
    row = next(line for line in section.splitlines() if line.startswith("| pa_hier"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:4] == ["pa_hier (standard)", "pa", "3", "+0.0433 ± 0.0603 (2/3)"]
    assert cells[4] == "+0.0000 ± 0.0000 (0/3)"  # R@1 unchanged: never higher
    assert "ms_hier" not in section
