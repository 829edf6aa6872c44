"""End to end: the Snakemake workflow on a tiny config, its incremental behaviour, bad params."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import REPO, write_yaml

pytestmark = pytest.mark.slow


def _workflow_copy(root: Path) -> Path:
    """The workflow files in a fresh directory, as a clone would have them."""
    shutil.copy(REPO / "Snakefile", root / "Snakefile")
    shutil.copytree(REPO / "workflow", root / "workflow")
    shutil.copytree(REPO / "params", root / "params")
    return root


def snakemake(root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "--cores",
            "2",
            "--configfile",
            "params/tiny.yaml",
            *args,
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def finished_workflow(tmp_path_factory):
    from conftest import TINY_PARAMS

    root = _workflow_copy(tmp_path_factory.mktemp("workflow"))
    write_yaml(TINY_PARAMS, root / "params/tiny.yaml")
    result = snakemake(root)
    assert result.returncode == 0, result.stderr[-5000:]
    return root


def _outputs(root: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (root / "results").rglob("*") if p.is_file()}


def test_workflow_produces_summary_with_every_model(finished_workflow):
    results = finished_workflow / "results/tiny"
    summary = pd.read_parquet(results / "summary.parquet")
    assert sorted(summary["model"]) == ["normface", "proxydr", "random", "softmax"]
    markdown = (results / "summary.md").read_text()
    for model in ("softmax", "normface", "proxydr", "random"):
        assert f"| {model} | 1 |" in markdown
    metrics = json.loads((results / "shapes/proxydr-s1/metrics.json").read_text())["metrics"]
    for key in (
        "classification/logits/top1",
        "retrieval/recall@1",
        "retrieval/map@r",
        "hierarchy/proxy/classwise_spearman",
        "hierarchy/prototype/classwise_spearman",
        "classification/logits/ahc",
    ):
        assert key in metrics
    # the untrained baseline has no classifier, only prototypes
    random = json.loads((results / "shapes/random-s1/metrics.json").read_text())["metrics"]
    assert "classification/logits/top1" not in random
    assert "hierarchy/prototype/classwise_spearman" in random
    # checkpoints are removed once a run is complete
    assert not list(results.rglob("checkpoint"))


def test_second_run_does_nothing(finished_workflow):
    before = _outputs(finished_workflow)
    result = snakemake(finished_workflow)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Nothing to be done" in result.stderr + result.stdout
    assert _outputs(finished_workflow) == before


def test_deleting_one_metrics_file_reruns_only_that_evaluation(finished_workflow):
    target = finished_workflow / "results/tiny/shapes/normface-s1/metrics.json"
    content = target.read_text()
    target.unlink()
    before = _outputs(finished_workflow)
    result = snakemake(finished_workflow)
    assert result.returncode == 0, result.stderr[-3000:]
    after = _outputs(finished_workflow)
    changed = sorted(p.name for p in after if before.get(p) != after[p])
    assert changed == ["metrics.json", "summary.csv", "summary.md", "summary.parquet"]
    assert target.read_text() == content  # evaluation is a pure function of its inputs


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p["train"].update(lr=-0.1), "lr"),
        (lambda p: p["train"].update(learning_rate=0.1), "learning_rate"),
        (lambda p: p["runs"].append("arcface"), "runs lists model 'arcface'"),
        (lambda p: p["datasets"].update(imagenet={}), "unknown dataset 'imagenet'"),
    ],
)
def test_bad_params_fail_before_any_job(tmp_path, tiny_params, edit, message):
    root = _workflow_copy(tmp_path)
    edit(tiny_params)
    write_yaml(tiny_params, root / "params/tiny.yaml")
    result = snakemake(root, "--dry-run")
    assert result.returncode != 0
    assert message in result.stderr + result.stdout
    assert not (root / "results").exists() and not (root / "data").exists()
