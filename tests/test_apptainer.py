"""The workflow under a real Apptainer, from a host that has Snakemake and nothing else.

tests/runtimes/install-apptainer.sh installs a real Apptainer, tests/runtimes/build-test-image.sh
builds a test image: a Debian root filesystem with the CPython of this test's virtualenv,
which is bound into the container instead of copying gigabytes of wheels into the image.
Jobs run on the image's file system (its libc, its os-release), with the environment's
packages. The tiny experiment then runs twice: `snakemake --cores 2 --use-singularity` from a
virtualenv holding only workflow/host-requirements.txt (no torch), and plainly on the host.

Needs root on Debian (apt-get, debootstrap); elsewhere these tests skip with the reason, and
with CI=true they fail instead: CI must run them.
"""

import json
import os
import platform
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient
from real_runtimes import (
    RUNTIME_PARAMS,
    RUNTIME_RUN_IDS,
    SYSTEM_PATH,
    apptainer_args,
    build_image,
    host_virtualenv,
    run_timed,
    workflow_checkout,
)

from hierpipe.runtime.tracking import sanitize_metric_name

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return build_image(tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def host_venv(tmp_path_factory) -> Path:
    """A virtualenv with workflow/host-requirements.txt alone: Snakemake, no hierpipe stack."""
    return host_virtualenv(tmp_path_factory.mktemp("host") / "venv")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, image, host_venv, tiny_run_on_host) -> tuple[Path, Path]:
    """The tiny experiment in the image (from the Snakemake-only host) and on the host."""
    in_image = workflow_checkout(tmp_path_factory.mktemp("runs") / "in_image", RUNTIME_PARAMS)
    environ = {
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        # the host virtualenv and the system, but not the tests' virtualenv: no hierpipe stack
        "PATH": f"{host_venv / 'bin'}:{SYSTEM_PATH}",
        # the GPUs jobs may share, the one variable gpu_slots reads under --cleanenv
        "APPTAINERENV_HIERPIPE_GPUS": "0,1",
    }
    run_timed(
        [
            str(host_venv / "bin/snakemake"),
            "--cores",
            "2",
            "--resources",
            "gpu=2",
            "--use-singularity",
            apptainer_args("--cleanenv"),
            "--configfile",
            "params/tiny.yaml",
            "--config",
            f"container={image}",
        ],
        "the tiny experiment in the image",
        1500,
        cwd=in_image,
        env=environ,
    )
    return in_image, tiny_run_on_host


def _image_release(image: Path) -> dict[str, str]:
    text = subprocess.run(
        ["apptainer", "exec", str(image), "cat", "/etc/os-release"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pairs = (line.split("=", 1) for line in text.splitlines() if "=" in line)
    return {key: value.strip('"') for key, value in pairs}


def test_every_job_ran_inside_the_image(runs, image):
    in_image, _ = runs
    release = _image_release(image)
    # the image's BUILD_ID exists on its file system alone: a log naming it was written there
    assert release.get("BUILD_ID", "").startswith("hierpipe-test-"), release
    assert platform.freedesktop_os_release().get("BUILD_ID") != release["BUILD_ID"]
    system = f"{release['PRETTY_NAME']}, build {release['BUILD_ID']}"
    logs = sorted((in_image / "logs").rglob("*.log"))
    expected = {
        f"tiny/shapes/{run}/{step}.log"
        for run in RUNTIME_RUN_IDS
        for step in ("train", "embed", "evaluate")
    }
    expected |= {
        "data/shapes/prepare.log",
        "tiny/params.log",
        "tiny/aggregate.log",
        "tiny/figures/maps.log",
        "tiny/figures/plots.log",
    }
    names = {str(log.relative_to(in_image / "logs")) for log in logs}
    assert expected <= names, sorted(expected - names)
    marker = f"in the container {image} ({system};"
    for log in logs:
        assert marker in log.read_text(), f"{log} has no line saying it ran in {image}"
    # gpu_slots ran inside too, and handed each GPU job one of the two GPUs
    for run in RUNTIME_RUN_IDS:
        for step in ("train", "embed"):
            text = (in_image / f"logs/tiny/shapes/{run}/{step}.log").read_text()
            assert "hierpipe.runtime.gpu_slots: running on GPU 0" in text or (
                "hierpipe.runtime.gpu_slots: running on GPU 1" in text
            ), text[-2000:]


def test_the_store_holds_every_run_finished(runs):
    in_image, _ = runs
    client = MlflowClient(f"sqlite:///{in_image}/mlflow/mlflow.db")
    experiment = client.get_experiment_by_name("tiny")
    everything = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in everything if "mlflow.parentRunId" not in run.data.tags]
    assert parent.info.status == "FINISHED"
    children = {run.info.run_name: run for run in everything if run is not parent}
    expected = {f"shapes/{run}/{step}" for run in RUNTIME_RUN_IDS for step in ("train", "evaluate")}
    assert set(children) == expected
    for name, child in children.items():
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED", name
        if name.endswith("/evaluate"):
            # every measure of the run's metrics.json, under MLflow's name for it
            run = name.split("/")[1]
            document = json.loads(
                (in_image / f"results/tiny/shapes/{run}/metrics.json").read_text()
            )
            measures = {
                sanitize_metric_name(key): value
                for key, value in document["metrics"].items()
                if value is not None
            }
            assert child.data.metrics == pytest.approx(measures, nan_ok=True), name


def test_results_equal_a_host_run_bitwise(runs):
    in_image, on_host = runs
    compared = [f"results/tiny/shapes/{run}/metrics.json" for run in RUNTIME_RUN_IDS]
    compared += [f"results/tiny/summary.{extension}" for extension in ("md", "csv", "parquet")]
    for name in compared:
        assert (in_image / name).read_bytes() == (on_host / name).read_bytes(), name
