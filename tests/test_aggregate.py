import json
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from hierpipe.core.errors import HierpipeError
from hierpipe.core.questions import questions_from_params
from hierpipe.reporting.aggregate import aggregate, collect_runs, summarize


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
        "backbone": "resnet10t",
        "embedding_dim": 64,
        "space": "sphere",
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
    # mean ± sd [t-interval: 0.7 ± t(0.975, 2) 0.2 / sqrt(3)], bold: the best R@1
    assert "| proxydr (standard) | 3 | **0.7000 ± 0.2000 [0.2032, 1.1968]** |" in markdown
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


def _table_rows(markdown, title):
    section = markdown.split(f"## {title}")[1].split("\n## ")[0]
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| ") and not line.startswith("| dataset")
    ]


def test_questions_from_params_pair_rows_and_test_seed_by_seed(tmp_path):
    rho = "hierarchy/prototype/classwise_spearman"
    values = {
        ("pa", 1): 0.30,
        ("pa", 2): 0.40,
        ("pa", 3): 0.50,
        ("pa", 4): 0.45,
        ("pa_hier", 1): 0.35,
        ("pa_hier", 2): 0.38,
        ("pa_hier", 3): 0.60,
        ("pa_hier", 4): 0.61,
        ("ms_hier", 1): 0.9,  # not part of the question
    }
    files = [
        _write_metrics(tmp_path / f"{m}-s{s}.json", m, s, {rho: v, "retrieval/recall@1": 0.5})
        for (m, s), v in values.items()
    ]
    params = {
        "models": {"pa": {}, "pa_hier": {}, "ms_hier": {}},
        "comparisons": [
            {
                "name": "HIER vs PA",
                "treatment": {"model": "pa_hier"},
                "control": {"model": "pa"},
                "measures": [rho, "retrieval/recall@1"],
            }
        ],
        "statistics": {"correction": "bonferroni"},
    }
    aggregate(files, tmp_path / "out", params=params)
    table = pd.read_parquet(tmp_path / "out/comparisons.parquet").set_index("measure")
    treated = np.array([0.35, 0.38, 0.60, 0.61])
    control = np.array([0.30, 0.40, 0.50, 0.45])
    expected_t = stats.ttest_rel(treated, control)
    row = table.loc[rho]
    assert (row["treatment"], row["control"], row["n"]) == (
        "pa_hier (standard)",
        "pa (standard)",
        4,
    )
    assert row["difference"] == pytest.approx((treated - control).mean())
    assert row["t"] == pytest.approx(expected_t.statistic)
    assert row["p_t"] == pytest.approx(expected_t.pvalue)
    interval = expected_t.confidence_interval(0.95)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((interval.low, interval.high))
    assert row["p_wilcoxon"] == pytest.approx(stats.wilcoxon(treated, control).pvalue)
    # two measures in the question, Bonferroni: but R@1 never differs, so neither test has a
    # p-value for it and only one test of each kind counts
    assert math.isnan(table.loc["retrieval/recall@1", "p_t"])
    assert math.isnan(table.loc["retrieval/recall@1", "p_wilcoxon"])
    assert row["p_t_adjusted"] == pytest.approx(expected_t.pvalue)
    assert row["p_wilcoxon_adjusted"] == pytest.approx(row["p_wilcoxon"])
    markdown = (tmp_path / "out/comparisons.md").read_text()
    rows = _table_rows(markdown, "HIER vs PA")
    assert rows[0][:6] == [
        "toy",
        "pa_hier (standard)",
        "pa (standard)",
        "classwise rho (prototype)",
        "4",
        f"+0.0725 [{interval.low:+.4f}, {interval.high:+.4f}]",
    ]


def test_a_question_naming_an_unknown_model_is_refused():
    params = {
        "models": {"pa": {}},
        "comparisons": [
            {"name": "q", "treatment": {"model": "pa_hier"}, "control": {"model": "pa"}}
        ],
    }
    with pytest.raises(
        HierpipeError, match=r"comparisons\[0\] \('q'\): treatment.model names \['pa_hier'\]"
    ):
        questions_from_params(params)


def test_a_question_naming_an_unknown_measure_is_refused():
    question = {"name": "q", "treatment": {"model": "pa"}, "control": {"model": "pa"}}
    params = {"models": {"pa": {}}, "comparisons": [{**question, "measures": ["retrieval/mrr"]}]}
    with pytest.raises(
        HierpipeError, match=r"comparisons\[0\] \('q'\): measures: unknown measure 'retrieval/mrr'"
    ):
        questions_from_params(params)


def test_best_value_per_column_among_learned_models(tmp_path):
    ahc = "classification/logits/ahc"  # a cost: lower is better
    rho = "hierarchy/proxy/classwise_spearman"
    runs = pd.DataFrame(
        [
            {"model": "a", "ahc": 1.2, "rho": 0.3, "mds": False, "trained": True},
            {"model": "b", "ahc": 0.9, "rho": 0.2, "mds": False, "trained": True},
            {"model": "mds", "ahc": 0.5, "rho": 0.9, "mds": True, "trained": True},
            {"model": "random", "ahc": 0.1, "rho": 0.95, "mds": False, "trained": False},
        ]
    )
    files = []
    for row in runs.itertuples():
        path = _write_metrics(
            tmp_path / f"{row.model}.json", row.model, 1, {ahc: row.ahc, rho: row.rho}
        )
        document = json.loads(path.read_text())
        document.update(proxies_from_hierarchy=row.mds, trained=row.trained)
        path.write_text(json.dumps(document))
        files.append(path)
    summary = summarize(collect_runs(files)).set_index("model")
    assert summary[f"{ahc}/best"].to_dict() == {
        "a": False,
        "b": True,
        "mds": False,
        "random": False,
    }
    assert summary[f"{rho}/best"].to_dict() == {
        "a": True,
        "b": False,
        "mds": False,
        "random": False,
    }


def test_retrieval_table_puts_the_paper_beside_our_runs(tmp_path):
    files = []
    for seed, r1 in ((1, 0.70), (2, 0.72)):
        path = _write_metrics(
            tmp_path / f"s{seed}.json",
            "hier_r50_cub",
            seed,
            {"retrieval/recall@1": r1, "retrieval/recall@2": 0.8, "retrieval/recall@4": 0.9},
            loss="proxy_anchor",
            regularizer="hier",
        )
        document = json.loads(path.read_text())
        document.update(dataset="cub200", backbone="resnet50", embedding_dim=512)
        path.write_text(json.dumps(document))
        files.append(path)
    aggregate(files, tmp_path / "out")
    table = pd.read_csv(tmp_path / "out/retrieval_table.csv")
    ours = table[table["source"] == "hierpipe"].set_index("k")
    assert ours.loc[1, ["method", "arch", "dataset"]].tolist() == ["HIER", "R512", "cub200"]
    assert ours.loc[1, "recall"] == pytest.approx(71.0)
    paper = table[table["source"] == "paper"].set_index("k")["recall"].to_dict()
    assert paper == {1: 70.1, 2: 79.4, 4: 86.9}  # HIER, Table 1, CUB, R512
    markdown = (tmp_path / "out/retrieval_table.md").read_text()
    assert "| HIER | R512 | hierpipe | 71.0 ± 1.4 | 80.0 ± 0.0 | 90.0 ± 0.0 |" in markdown
    assert "| HIER | R512 | paper | 70.1 | 79.4 | 86.9 |" in markdown
