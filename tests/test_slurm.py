"""The workflow on a real one-node SLURM cluster, as a university cluster's user runs it.

tests/runtimes/slurm.sh starts SLURM 22.05 with accounting (munge, MariaDB, slurmdbd,
slurmctld, slurmd; two GPUs as gres backed by character devices that nothing opens), and
tests/runtimes/postgres.sh a PostgreSQL for a real MLflow tracking server. The workflow runs
from a virtualenv holding workflow/host-requirements.txt and the SLURM executor plugin, with
a copy of workflow/profiles/slurm in which only the partition and the account are set (what
README tells users to set), every job in the test image. Every daemon is stopped by PID.
"""

import copy
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from real_runtimes import (
    RUNTIME_PARAMS,
    RUNTIME_RUN_IDS,
    RUNTIMES,
    build_image,
    host_environment,
    host_virtualenv,
    require_real_runtimes,
    run_timed,
    slurm_cluster,
    slurm_command,
    workflow_checkout,
)

from hierpipe.runtime.tracking import sanitize_metric_name

pytestmark = pytest.mark.slow


def _experiment(name: str, **changes) -> dict:
    params = copy.deepcopy(RUNTIME_PARAMS)
    params["experiment"] = name
    params["runs"] = [{"model": "softmax"}]
    for key, value in changes.items():
        params[key] = {**params.get(key, {}), **value}
    return params


@pytest.fixture(scope="module")
def cluster():
    """SLURM up (four CPUs, so that only the two GPUs make a third GPU job wait); its env."""
    with slurm_cluster(cpus=4) as environ:
        yield environ


@pytest.fixture(scope="module")
def tracking_server():
    """An MLflow server on 127.0.0.1 with a PostgreSQL backend; its URI."""
    require_real_runtimes()
    directory = Path(tempfile.mkdtemp(prefix="hp-pg-", dir="/tmp"))
    script = ["bash", str(RUNTIMES / "postgres.sh")]
    environ = {**os.environ, "PGRT_GRANT_TRAVERSE": "1"}
    run_timed([*script, "start", str(directory), "15432"], "starting PostgreSQL", 300, env=environ)
    # SQLAlchemy 2.1 makes plain postgresql:// mean psycopg 3: name the driver installed
    backend = (directory / "uri").read_text().strip().replace("postgresql:", "postgresql+psycopg2:")
    log = (directory / "mlflow-server.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--backend-store-uri",
            backend,
            "--artifacts-destination",
            str(directory / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            "15000",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its uvicorn and huey workers go with it
    )
    uri = "http://127.0.0.1:15000"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{uri}/health", timeout=2)
                break
            except OSError:
                assert server.poll() is None, (directory / "mlflow-server.log").read_text()
                assert time.monotonic() < deadline, "the MLflow server did not answer in 120 s"
                time.sleep(1)
        yield uri
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
        run_timed([*script, "stop", str(directory)], "stopping PostgreSQL", 120)


@pytest.fixture(scope="module")
def image(tmp_path_factory) -> Path:
    return build_image(tmp_path_factory.mktemp("image"))


@pytest.fixture(scope="module")
def host_venv(tmp_path_factory) -> Path:
    """Snakemake and the SLURM executor plugin, nothing of hierpipe's stack."""
    venv = tmp_path_factory.mktemp("host") / "venv"
    return host_virtualenv(venv, "snakemake-executor-plugin-slurm")


def _on_cluster(root, cluster, host_venv, image, *args, tracking_uri=None, **popen):
    """README's SLURM command (real_runtimes.slurm_command); a Popen."""
    tracking = {} if tracking_uri is None else {"MLFLOW_TRACKING_URI": tracking_uri}
    command, environ = slurm_command(root, cluster, host_venv, image, *args, **tracking)
    return subprocess.Popen(command, cwd=root, env=environ, text=True, **popen)


def _finish(job: subprocess.Popen, timeout: int = 1200) -> tuple[int, str]:
    output = job.communicate(timeout=timeout)[0]
    return job.returncode, output


def _sacct(cluster: dict, since: str) -> list[dict[str, str]]:
    fields = ["JobID", "State", "Start", "End", "ExitCode"]
    listing = subprocess.run(
        ["sacct", "-X", "-n", "-P", "-S", since, f"--format={','.join(fields)}"],
        env={
            **os.environ,
            "SLURM_CONF": cluster["SLURM_CONF"],
            "PATH": f"{cluster['SLURMRT_BIN']}:{os.environ['PATH']}",
        },
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [dict(zip(fields, line.split("|"), strict=True)) for line in listing.splitlines()]


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, cluster, tracking_server, host_venv, image, tiny_run_on_host) -> dict:
    """The tiny experiment through SLURM (logging to the tracking server) and locally."""
    on_cluster = workflow_checkout(tmp_path_factory.mktemp("runs") / "on_cluster", RUNTIME_PARAMS)
    since = _now()
    job = _on_cluster(
        on_cluster,
        cluster,
        host_venv,
        image,
        tracking_uri=tracking_server,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    returncode, output = _finish(job)
    assert returncode == 0, output[-5000:]
    return {"cluster": on_cluster, "local": tiny_run_on_host, "since": since}


def test_every_job_completed_and_the_results_equal_a_local_run(runs, cluster):
    jobs = _sacct(cluster, runs["since"])
    # one cluster job per run (train, embed, evaluate) and per figure job; obtaining the
    # dataset and writing the resolved params and tables ran where Snakemake ran
    assert len(jobs) == len(RUNTIME_RUN_IDS) + 2, jobs
    assert {job["State"] for job in jobs} == {"COMPLETED"}, jobs
    compared = [f"results/tiny/shapes/{run}/metrics.json" for run in RUNTIME_RUN_IDS]
    compared += [f"results/tiny/summary.{extension}" for extension in ("md", "csv", "parquet")]
    for name in compared:
        assert (runs["cluster"] / name).read_bytes() == (runs["local"] / name).read_bytes(), name


def test_each_job_ran_in_the_image_on_the_gpus_slurm_gave_it(runs, cluster, image):
    root = runs["cluster"]
    for log in (root / "logs").rglob("*.log"):  # local rules' too
        assert f"in the container {image} (" in log.read_text(), log
    used = {}
    for run in RUNTIME_RUN_IDS:
        for step in ("train", "embed"):
            text = (root / f"logs/tiny/shapes/{run}/{step}.log").read_text()
            line = next(line for line in text.splitlines() if "allocated GPUs" in line)
            job_id, allocated, running = _parse_gpu_line(line)
            assert allocated == running and running in ("0", "1"), line
            assert used.setdefault(job_id, running) == running  # one job: train, then embed
    spans = {job["JobID"]: (job["Start"], job["End"]) for job in _sacct(cluster, runs["since"])}
    for first in used:
        for second in used:
            overlap = spans[first][0] < spans[second][1] and spans[second][0] < spans[first][1]
            if first < second and overlap:
                assert used[first] != used[second], (first, second, used)
    assert not (root / ".snakemake/gpu-slots").exists()  # no lock files on the shared disk


def _parse_gpu_line(line: str) -> tuple[str, str, str]:
    # "hierpipe.runtime.gpu_slots: SLURM job 4 allocated GPUs [0], running on [0]"
    words = line.split()
    job_id = words[words.index("job") + 1]
    allocated = line.split("allocated GPUs [")[1].split("]")[0]
    running = line.split("running on [")[1].split("]")[0]
    return job_id, allocated, running


def test_the_tracking_server_holds_every_run_finished_with_its_metrics(runs, tracking_server):
    client = MlflowClient(tracking_server)
    experiment = client.get_experiment_by_name("tiny")
    everything = client.search_runs([experiment.experiment_id])
    (parent,) = [run for run in everything if "mlflow.parentRunId" not in run.data.tags]
    assert parent.info.status == "FINISHED"
    children = {run.info.run_name: run for run in everything if run is not parent}
    assert set(children) == {
        f"shapes/{run}/{s}" for run in RUNTIME_RUN_IDS for s in ("train", "evaluate")
    }
    for name, child in children.items():
        assert child.info.status == "FINISHED", name
        if name.endswith("/evaluate"):
            metrics = runs["cluster"] / f"results/tiny/shapes/{name.split('/')[1]}/metrics.json"
            measures = {
                sanitize_metric_name(key): value
                for key, value in json.loads(metrics.read_text())["metrics"].items()
                if value is not None
            }
            assert child.data.metrics == pytest.approx(measures, nan_ok=True), name


def _model(root: Path, experiment: str) -> dict:
    path = root / f"results/{experiment}/shapes/softmax-standard-s1/model.pt"
    return torch.load(path, weights_only=True)["net"]


def test_a_cancelled_training_job_is_retried_and_resumes_bitwise(
    tmp_path, cluster, host_venv, image
):
    params = _experiment("tiny_cancel", train={"epochs": 40})
    reference = workflow_checkout(tmp_path / "reference", params)
    command = [sys.executable, "-m", "snakemake", "--cores", "1", "--configfile"]
    environ = {**host_environment(), "HIERPIPE_MLFLOW": "0"}
    run_timed([*command, "params/tiny.yaml"], "uninterrupted", 900, cwd=reference, env=environ)

    root = workflow_checkout(tmp_path / "cancelled", params)
    since = _now()
    job = _on_cluster(
        root,
        cluster,
        host_venv,
        image,
        "--retries",
        "1",
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    checkpoint = root / "results/tiny_cancel/shapes/softmax-standard-s1/checkpoint/last.pt"
    while not checkpoint.exists():
        assert job.poll() is None, "the workflow ended before training wrote a checkpoint"
        time.sleep(0.1)
    slurm = {
        **os.environ,
        "SLURM_CONF": cluster["SLURM_CONF"],
        "PATH": f"{cluster['SLURMRT_BIN']}:{os.environ['PATH']}",
    }
    running = subprocess.run(
        ["squeue", "-h", "-t", "RUNNING", "-o", "%i"], env=slurm, capture_output=True, text=True
    ).stdout.split()
    assert len(running) == 1, running
    subprocess.run(["scancel", running[0]], env=slurm, check=True)
    returncode, output = _finish(job)
    assert returncode == 0, output[-5000:]
    assert "Trying to restart job" in output
    log = (root / "logs/tiny_cancel/shapes/softmax-standard-s1/train.log").read_text()
    assert "resuming after epoch" in log
    states = {job["JobID"]: job["State"] for job in _sacct(cluster, since)}
    assert states[running[0]].startswith("CANCELLED"), states
    model, expected = _model(root, "tiny_cancel"), _model(reference, "tiny_cancel")
    assert model.keys() == expected.keys()
    assert all(torch.equal(model[key], expected[key]) for key in model)


def test_a_job_that_fails_ends_the_workflow_naming_its_log(tmp_path, cluster, host_venv, image):
    params = _experiment("tiny_fail", backbone={"name": "resnet9000"})
    root = workflow_checkout(tmp_path / "failing", params)
    returncode, output = _finish(
        _on_cluster(
            root, cluster, host_venv, image, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    )
    assert returncode != 0
    log = "logs/tiny_fail/shapes/softmax-standard-s1/train.log"
    assert log in output, output[-5000:]
    assert "backbone.name 'resnet9000' is not a timm model name" in (root / log).read_text()


@pytest.fixture(scope="module")
def too_big(tmp_path_factory, cluster, host_venv, image) -> tuple[Path, int, str, list]:
    """A training job asking for more memory than the node has: the workflow's output."""
    training = {**RUNTIME_PARAMS["resources"]["training"], "mem_mb": 10_000_000}
    params = _experiment("tiny_big", resources={"training": training})
    root = workflow_checkout(tmp_path_factory.mktemp("too_big") / "workflow", params)
    since = _now()
    returncode, output = _finish(
        _on_cluster(
            root, cluster, host_venv, image, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
    )
    return root, returncode, output, _sacct(cluster, since)


def test_asking_more_than_the_partition_has_fails_before_any_job_with_slurms_message(too_big):
    root, returncode, output, jobs = too_big
    assert returncode != 0
    # sbatch --test-only's verdict on the run's cluster job, and what the partition has
    assert (
        "SLURM refuses the cluster job of group run (embed, evaluate, train) "
        "(1 CPUs, 1 GPUs, 10000000 MB, 45 min on partition main): allocation failure: "
        "Requested node configuration is not available (partition main has nodes of 4 CPUs"
    ) in output, output[-5000:]
    # nothing was submitted and nothing ran
    assert jobs == []
    assert not (root / "data").exists() and not (root / "results/tiny_big").exists()
