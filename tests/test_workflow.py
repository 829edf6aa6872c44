"""End to end: the default experiment through Snakemake, its incremental behaviour, bad params."""

import json
import os
import shutil
import subprocess
import sys
import zipfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import REPO, write_yaml
from PIL import Image

from hierpipe.reporting.plots.plan import KINDS, figure_plan

pytestmark = pytest.mark.slow


def _workflow_copy(root: Path) -> Path:
    """The workflow files in a fresh directory, as a clone would have them."""
    shutil.copy(REPO / "Snakefile", root / "Snakefile")
    shutil.copytree(REPO / "workflow", root / "workflow")
    shutil.copytree(REPO / "params", root / "params")
    return root


def _dvc_project_copy(root: Path) -> Path:
    """The workflow plus what DVC tracks (dvc.yaml, .dvc/, the package), in a new git repo."""
    _workflow_copy(root)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, root / name)
    shutil.copytree(REPO / ".dvc", root / ".dvc", ignore=shutil.ignore_patterns("tmp", "cache"))
    shutil.copytree(
        REPO / "hierpipe", root / "hierpipe", ignore=shutil.ignore_patterns("__pycache__")
    )
    git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.org"]
    for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "clone"]):
        subprocess.run([*git, *command], cwd=root, check=True, capture_output=True)
    return root


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def snakemake(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=root,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def dvc(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def finished_workflow(tmp_path_factory):
    """A bare `dvc repro` on a fresh repository: its one stage runs `snakemake --cores all` on
    params/default.yaml, as the README's first command does, and nothing else."""
    root = _dvc_project_copy(tmp_path_factory.mktemp("workflow"))
    result = dvc(root, "repro")
    assert result.returncode == 0, (result.stdout + result.stderr)[-5000:]
    assert "Running stage 'default'" in result.stdout
    assert "proxydr" not in result.stdout and "'hier'" not in result.stdout
    assert sorted(p.name for p in (root / "data").iterdir()) == ["shapes"]
    return root


def _outputs(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (root / "results").rglob("*") if p.is_file()}


DEFAULT_RUNS = [
    ("corr", "mds"),
    ("normface", "standard"),
    ("proxy_anchor", "standard"),
    ("proxy_anchor_hier", "standard"),
    ("proxydr", "dynamic"),
    ("proxydr", "ema"),
    ("proxydr", "mds"),
    ("proxydr", "standard"),
    ("random", "standard"),
    ("softmax", "standard"),
]


def test_default_experiment_produces_summary_with_every_model(finished_workflow):
    results = finished_workflow / "results/default"
    summary = pd.read_parquet(results / "summary.parquet")
    assert sorted(zip(summary["model"], summary["option"], strict=True)) == DEFAULT_RUNS
    markdown = (results / "summary.md").read_text()
    for model, option in DEFAULT_RUNS:
        assert f"| {model} ({option}) " in markdown
    metrics = json.loads((results / "shapes/proxydr-standard-s1/metrics.json").read_text())[
        "metrics"
    ]
    for key in (
        "classification/logits/top1",
        "classification/logits/top5",
        "classification/logits/ahc",
        "retrieval/recall@1",
        "retrieval/precision@1",
        "retrieval/r_precision",
        "retrieval/map@r",
        "hierarchy/proxy/classwise_spearman",
        "hierarchy/prototype/classwise_spearman",
    ):
        assert key in metrics
    # the untrained baseline has no classifier, only prototypes
    random = json.loads((results / "shapes/random-standard-s1/metrics.json").read_text())["metrics"]
    assert "classification/logits/top1" not in random
    assert "hierarchy/prototype/classwise_spearman" in random
    # PA + HIER: retrieval in the ball, its hierarchical proxies judged, compared with PA
    hier = json.loads((results / "shapes/proxy_anchor_hier-standard-s1/metrics.json").read_text())
    assert hier["regularizer"] == "hier" and hier["loss"] == "proxy_anchor"
    for key in (
        "hierarchy/ball_prototype/classwise_spearman",
        "hierarchy/hier_proxy/induced_norm_rf",
        "hierarchy/hier_proxy/lca_classwise_spearman",
    ):
        assert hier["metrics"][key] is not None, key
    comparisons = (results / "comparisons.md").read_text()
    section = comparisons.split("## Proxy Anchor + HIER vs Proxy Anchor")[1].split("\n## ")[0]
    assert "| shapes | proxy_anchor_hier (standard) | proxy_anchor (standard) |" in section
    # checkpoints are removed once a run is complete
    assert not list(results.rglob("checkpoint"))


def test_trained_models_beat_random_weights(finished_workflow):
    summary = pd.read_parquet(finished_workflow / "results/default/summary.parquet")
    baseline = summary[summary["model"] == "random"].iloc[0]
    trained = summary[summary["trained"]]
    assert len(trained) == len(DEFAULT_RUNS) - 1
    for measure in ("retrieval/recall@1", "hierarchy/prototype/classwise_spearman"):
        assert (trained[f"{measure}/mean"] > baseline[f"{measure}/mean"]).all(), measure
    # the learned proxies, too, reflect the tree better than the random backbone's prototypes
    assert (
        trained["hierarchy/proxy/classwise_spearman/mean"]
        > baseline["hierarchy/prototype/classwise_spearman/mean"]
    ).all()
    markdown = (finished_workflow / "results/default/summary.md").read_text()
    assert markdown.count("| yes |") == len(trained)


def test_every_applicable_figure_is_a_real_image(finished_workflow):
    results = finished_workflow / "results/default"
    plan = figure_plan(yaml.safe_load((results / "params.yaml").read_text()))
    # the default grid has one embedding dimension: R@1 against dimension does not apply
    assert {figure.kind for figure in plan} == set(KINDS) - {"recall_vs_dimension"}
    for figure in plan:
        with Image.open(results / f"{figure.stem}.png") as image:
            assert image.width >= 300 and image.height >= 200, figure.stem
            grey = np.asarray(image.convert("L"), dtype=np.float64)
        assert grey.std() > 10.0, f"{figure.stem} is nearly blank"
        assert (results / f"{figure.stem}.pdf").read_bytes().startswith(b"%PDF"), figure.stem


def test_report_gathers_tables_figures_and_params(finished_workflow):
    results = finished_workflow / "results/default"
    result = snakemake(finished_workflow, "--report", "results/default/report.zip")
    assert result.returncode == 0, result.stderr[-3000:]
    with zipfile.ZipFile(results / "report.zip") as archive:
        names = archive.namelist()
        index = archive.read(next(n for n in names if n.endswith("report.html"))).decode()
    plan = figure_plan(yaml.safe_load((results / "params.yaml").read_text()))
    expected = Counter(f"{Path(figure.stem).name}.png" for figure in plan)
    expected.update(["params.yaml", "summary.md", "comparisons.md", "retrieval_table.md"])
    # the report stores each file as report/data/raw/<hash>/<file name>
    assert Counter(Path(name).name for name in names if "/data/raw/" in name) == expected
    # captions and categories travel with the files
    assert "Learned trees" in index and "UPGMA" in index


def test_figures_are_logged_to_the_runs_mlflow_entries(finished_workflow):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{finished_workflow / 'mlflow/mlflow.db'}")
    (experiment,) = client.search_experiments(filter_string="name = 'default'")
    runs = {
        run.info.run_name: run.info.run_id
        for run in client.search_runs([experiment.experiment_id], max_results=1000)
    }
    per_run = client.list_artifacts(
        runs["shapes/proxy_anchor_hier-standard-s1/evaluate"], "figures"
    )
    assert {Path(a.path).name for a in per_run} >= {
        "embedding_map.png",
        "embedding_map.pdf",
        "boundary_proxies.png",
        "tree_comparison.png",
    }
    parents = [
        run
        for run in client.search_runs([experiment.experiment_id])
        if "mlflow.parentRunId" not in run.data.tags
    ]
    shared = {
        Path(a.path).name
        for run in parents
        for a in client.list_artifacts(run.info.run_id, "figures/shapes")
    }
    assert {"affinity.png", "hs_curves.png"} <= shared


def test_second_run_does_nothing(finished_workflow):
    before = _outputs(finished_workflow)
    result = snakemake(finished_workflow)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stderr + result.stdout
    assert _outputs(finished_workflow) == before


TABLES = ("summary", "comparisons", "retrieval_table")


def test_deleting_one_metrics_file_reruns_that_evaluation_and_what_reads_it(finished_workflow):
    results = finished_workflow / "results/default"
    target = results / "shapes/normface-standard-s1/metrics.json"
    content = target.read_text()
    figures = {p: p.read_bytes() for p in (results / "figures").rglob("*.*")}
    target.unlink()
    before = _outputs(finished_workflow)
    result = snakemake(finished_workflow)
    assert result.returncode == 0, result.stderr[-3000:]
    after = _outputs(finished_workflow)
    changed = {p for p in after if before.get(p) != after[p]}
    tables = {results / f"{name}.{ext}" for name in TABLES for ext in ("csv", "md", "parquet")}
    assert changed == {target, *tables, *figures}
    assert target.read_text() == content  # evaluation is a pure function of its inputs
    # and drawing too: every figure redrawn from the same results has the same bytes
    assert all(path.read_bytes() == data for path, data in figures.items())


def test_dvc_is_up_to_date_and_a_second_repro_is_a_no_op(finished_workflow):
    status = dvc(finished_workflow, "status")
    assert status.returncode == 0, status.stderr[-3000:]
    assert "Data and pipelines are up to date." in status.stdout, status.stdout
    before = _outputs(finished_workflow)
    result = dvc(finished_workflow, "repro")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "didn't change, skipping" in result.stdout or "up to date" in result.stdout
    assert _outputs(finished_workflow) == before


def test_dvc_lists_the_metrics(finished_workflow):
    shown = dvc(finished_workflow, "metrics", "show", "--json")
    assert shown.returncode == 0, shown.stderr[-3000:]
    headline = json.loads((finished_workflow / "metrics/default.json").read_text())
    summary = pd.read_parquet(finished_workflow / "results/default/summary.parquet")
    corr = summary[summary["model"] == "corr"].iloc[0]
    value = headline["shapes"]["corr (mds)"]["retrieval/recall@1"]
    assert value == pytest.approx(corr["retrieval/recall@1/mean"])
    assert str(round(value, 4))[:5] in shown.stdout


def test_dvc_push_and_pull_restore_the_prepared_data(finished_workflow):
    samples = finished_workflow / "data/shapes/samples.parquet"
    content = samples.read_bytes()
    pushed = dvc(finished_workflow, "push", "default")
    assert pushed.returncode == 0, pushed.stderr[-3000:]
    assert (finished_workflow / "dvc-remote/files/md5").is_dir()
    shutil.rmtree(finished_workflow / "data/shapes")
    shutil.rmtree(finished_workflow / ".dvc/cache")
    pulled = dvc(finished_workflow, "pull", "default")
    assert pulled.returncode == 0, pulled.stderr[-3000:]
    assert samples.read_bytes() == content


def test_dvc_reruns_only_what_a_changed_param_touches(finished_workflow):
    params = finished_workflow / "params/default.yaml"
    params.write_text(params.read_text().replace("reduction: sum", "reduction: mean"))
    diff = dvc(finished_workflow, "params", "diff")
    assert "models.corr.hyperparameters.reduction" in diff.stdout, diff.stdout
    before = _outputs(finished_workflow)
    result = dvc(finished_workflow, "repro", "default")
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    after = _outputs(finished_workflow)
    results = finished_workflow / "results/default"
    changed = [p.relative_to(results) for p, mtime in after.items() if before.get(p) != mtime]
    runs = {p.parts[1] for p in changed if len(p.parts) > 2 and p.parts[0] != "figures"}
    assert runs == {"corr-mds-s1"}, sorted(map(str, changed))


def test_a_paper_grid_without_its_hand_downloaded_dataset_stops_before_any_job(tmp_path):
    """HIER's grid, In-shop not prepared: one line naming the dataset and how to get it, and
    no job has run (no dataset directory was made)."""
    root = _workflow_copy(tmp_path)
    result = snakemake(root, "--configfile", "params/hier.yaml")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    line = next(line for line in output.splitlines() if "datasets.inshop" in line)
    assert "is not prepared and cannot be downloaded" in line
    assert "by hand from http://mmlab.ie.cuhk.edu.hk/projects/DeepFashion.html" in line
    assert "hierpipe data prepare inshop --source" in line
    assert not (root / "data").exists()


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p["train"].update(lr=-0.1), "lr"),
        (lambda p: p["train"].update(learning_rate=0.1), "learning_rate"),
        (lambda p: p["runs"].append({"model": "arcface"}), "runs lists model 'arcface'"),
        (lambda p: p["datasets"].update(imagenet={}), "unknown dataset 'imagenet'"),
    ],
)
def test_bad_params_fail_before_any_job(tmp_path, tiny_params, edit, message):
    root = _workflow_copy(tmp_path)
    edit(tiny_params)
    write_yaml(tiny_params, root / "params/tiny.yaml")
    result = snakemake(root, "--configfile", "params/tiny.yaml", "--dry-run")
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (root / "results").exists() and not (root / "data").exists()


def _job_counts(output: str) -> dict[str, int]:
    """Snakemake's "Job stats" table of a dry run, as {rule: count}."""
    table = output.split("Job stats:")[1].split("\n\n")[0]
    rows = [line.split() for line in table.strip().splitlines()[2:]]
    return {rule: int(count) for rule, count in rows}


@pytest.mark.parametrize(
    ("params", "datasets"), [("params/proxydr_shapes.yaml", 1), ("params/proxydr.yaml", 2)]
)
def test_proxydr_grid_lists_every_job(tmp_path, params, datasets):
    root = _workflow_copy(tmp_path)
    result = snakemake(root, "--configfile", params, "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = _job_counts(result.stdout)
    # 14 runs per seed (ProxyDR's train_*_whole_models.sh) + the untrained baseline, 5 seeds,
    # per dataset
    assert counts["train"] == counts["embed"] == counts["evaluate"] == 15 * 5 * datasets
    assert counts["prepare_dataset"] == counts["split_dataset"] == datasets
    assert counts["aggregate"] == 1


def test_hier_shapes_grid_lists_every_job(tmp_path):
    root = _workflow_copy(tmp_path)
    result = snakemake(root, "--configfile", "params/hier_shapes.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = _job_counts(result.stdout)
    # PA, PA + HIER (lambda 0.5 and 1, sphere, Euclidean), MS, MS + HIER, Hyp, NormFace + HIER,
    # ProxyDR + HIER and the untrained baseline, 3 seeds, one dataset
    assert counts["train"] == counts["embed"] == counts["evaluate"] == 11 * 3
    assert counts["prepare_dataset"] == counts["split_dataset"] == counts["aggregate"] == 1


def test_hier_table1_grid_lists_every_job(tmp_path):
    root = _workflow_copy(tmp_path)
    result = snakemake(root, "--configfile", "params/hier.yaml", "--dry-run")
    assert result.returncode == 0, result.stderr[-3000:]
    counts = _job_counts(result.stdout)
    # ResNet-50 once per dataset; DeiT-S, DINO and ViT-S at 128-d and 384-d on all four
    assert counts["train"] == counts["embed"] == counts["evaluate"] == 4 + 6 * 4
    assert counts["prepare_dataset"] == counts["split_dataset"] == 4
    for dataset in ("cub200", "cars196", "sop", "inshop"):
        assert f"results/hier/{dataset}/hier_r50_" in result.stdout
