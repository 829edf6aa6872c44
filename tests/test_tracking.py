"""MLflow tracking: the workflow's parent run, the jobs' child runs, concurrency, the UI."""

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, write_yaml
from mlflow import MlflowClient
from test_run_steps import _config

from hierpipe.core.errors import HierpipeError
from hierpipe.evaluation.evaluate import evaluate_run
from hierpipe.evaluation.export import export_embeddings
from hierpipe.runtime import tracking
from hierpipe.train.engine import train_run

TRACKING_ENV = [
    prefix + name
    for prefix in ("", "APPTAINERENV_")
    for name in (tracking.URI_ENV, tracking.PARENT_ENV)
] + [tracking.ENABLED_ENV, tracking.LOG_MODEL_ENV]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    """No tracking variables from outside; those `start_workflow_run` sets are undone after."""
    for name in TRACKING_ENV:
        monkeypatch.setenv(name, "")  # recorded, so teardown restores the original state
        monkeypatch.delenv(name)


def test_flatten_params_joins_nested_keys_and_stringifies_leaves():
    nested = {"a": {"b": {"c": 1}, "d": [1, 2]}, "e": None, "f": {}, "g": "x" * 600}
    flat = tracking.flatten_params(nested)
    assert flat["a.b.c"] == "1" and flat["a.d"] == "[1, 2]"
    assert flat["e"] == "None" and flat["f"] == "{}"
    assert len(flat["g"]) == tracking.MAX_PARAM_LENGTH and flat["g"].endswith("...")


def test_metric_names_are_sanitised():
    assert tracking.sanitize_metric_name("retrieval/recall@1") == "retrieval/recall_at_1"
    assert tracking.sanitize_metric_name("hs@k (x)-1.5") == "hs_at_k _x_-1.5"


def test_no_tracking_without_a_parent_run_or_when_disabled(tiny_params, data_root, monkeypatch):
    config = _config(tiny_params, data_root)
    assert isinstance(tracking.run_tracker(config, "train"), tracking.NullTracker)
    monkeypatch.setenv(tracking.PARENT_ENV, "some-run")
    monkeypatch.setenv(tracking.ENABLED_ENV, "0")
    assert isinstance(tracking.run_tracker(config, "train"), tracking.NullTracker)


def test_dry_run_or_disabled_creates_nothing(tmp_path, monkeypatch):
    assert tracking.start_workflow_run(tmp_path, "tiny", dry_run=True) is None
    monkeypatch.setenv(tracking.ENABLED_ENV, "0")
    assert tracking.start_workflow_run(tmp_path, "tiny") is None
    assert not (tmp_path / "mlflow").exists()
    assert tracking.PARENT_ENV not in os.environ


def test_a_job_never_creates_the_store(tiny_params, data_root, tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path}/missing/mlflow.db"
    monkeypatch.setenv(tracking.URI_ENV, uri)
    monkeypatch.setenv(tracking.PARENT_ENV, "some-run")
    with pytest.raises(HierpipeError, match=uri):
        tracking.run_tracker(_config(tiny_params, data_root), "train")
    assert not (tmp_path / "missing").exists()


def test_workflow_run_with_train_and_evaluate_children(tiny_params, data_root, tmp_path):
    parent_id = tracking.start_workflow_run(tmp_path, "tiny")
    uri = f"sqlite:///{tmp_path}/mlflow/mlflow.db"
    assert os.environ[tracking.URI_ENV] == uri and os.environ[tracking.PARENT_ENV] == parent_id

    config = _config(tiny_params, data_root, epochs=3)
    out = tmp_path / "run"
    train_run(config, out / "model.pt", out / "train_log.parquet", out / "checkpoint")
    export_embeddings(out / "model.pt", out / "embeddings.parquet", out / "representatives.parquet")
    measures = evaluate_run(
        config, out / "embeddings.parquet", out / "representatives.parquet", out / "metrics.json"
    )
    tracking.end_workflow_run("FINISHED")

    client = MlflowClient(uri)
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED"
    experiment = client.get_experiment(parent.info.experiment_id)
    assert experiment.name == "tiny"
    assert experiment.artifact_location == (tmp_path / "mlflow/artifacts").as_uri()
    children = {
        run.info.run_name: run
        for run in client.search_runs(
            [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
        )
    }
    train = children[f"shapes/{config.run_id}/train"]
    evaluate = children[f"shapes/{config.run_id}/evaluate"]
    assert {train.info.status, evaluate.info.status} == {"FINISHED"}

    split = tracking.split_params(config.split_path)
    for run in (train, evaluate):
        assert run.data.params["model"] == "proxydr"
        assert run.data.params["train.epochs"] == "3"
        assert run.data.params["data.split_sha256"] == split["data.split_sha256"]
        assert run.data.params["data.split_md5"] == split["data.split_md5"]
    history = client.get_metric_history(train.info.run_id, "train_loss")
    assert sorted(m.step for m in history) == [1, 2, 3]
    assert len(client.get_metric_history(train.info.run_id, "val_top1")) == 3
    artifacts = {a.path for a in client.list_artifacts(train.info.run_id)}
    assert artifacts == {"config.yaml", "train_log.parquet", "model.pt"}

    logged = evaluate.data.metrics
    for name, value in measures.items():
        if value == value:  # NaN measures are null in metrics.json and not logged
            assert logged[tracking.sanitize_metric_name(name)] == pytest.approx(value)
    assert "retrieval/recall_at_1" in logged
    assert [a.path for a in client.list_artifacts(evaluate.info.run_id)] == ["metrics.json"]


def test_model_artifact_can_be_switched_off(tiny_params, data_root, tmp_path, monkeypatch):
    parent_id = tracking.start_workflow_run(tmp_path, "tiny")
    monkeypatch.setenv(tracking.LOG_MODEL_ENV, "0")
    config = _config(tiny_params, data_root, epochs=1)
    train_run(config, tmp_path / "model.pt", tmp_path / "train_log.parquet", tmp_path / "ckpt")
    client = MlflowClient(os.environ[tracking.URI_ENV])
    (child,) = client.search_runs(
        [client.get_run(parent_id).info.experiment_id], "attributes.run_name LIKE '%/train'"
    )
    assert {a.path for a in client.list_artifacts(child.info.run_id)} == {
        "config.yaml",
        "train_log.parquet",
    }


CHILD_JOB = textwrap.dedent(
    """
    import os, sys
    from hierpipe.runtime.tracking import RunTracker

    with RunTracker(os.environ["MLFLOW_TRACKING_URI"], sys.argv[1], sys.argv[2]) as tracker:
        for step in range(20):
            tracker.log_metrics({f"m{i}": step * 10 + i for i in range(5)}, step=step)
    """
)


JOBS = 16


def test_concurrent_children_on_one_sqlite_store(tmp_path):
    parent_id = tracking.start_workflow_run(tmp_path, "concurrent")
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD_JOB, parent_id, f"job{index:02d}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index in range(JOBS)
    ]
    outputs = [job.communicate(timeout=300)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0] * JOBS, "\n".join(outputs)
    assert not any("database is locked" in output for output in outputs)

    client = MlflowClient(os.environ[tracking.URI_ENV])
    experiment = client.get_experiment_by_name("concurrent")
    runs = client.search_runs(
        [experiment.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert sorted(run.info.run_name for run in runs) == [f"job{i:02d}" for i in range(JOBS)]
    counted = 0
    for run in runs:
        assert run.info.status == "FINISHED"
        for i in range(5):
            history = client.get_metric_history(run.info.run_id, f"m{i}")
            assert sorted((m.step, m.value) for m in history) == [
                (step, step * 10 + i) for step in range(20)
            ]
            counted += len(history)
    assert counted == JOBS * 5 * 20
    assert client.search_runs(["0"]) == []  # nothing strayed into the Default experiment
    print(f"{JOBS} concurrent jobs: all FINISHED, {counted} of {JOBS * 5 * 20} metric values")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_ui(root: Path, port: int) -> subprocess.Popen:
    """`hierpipe ui` on the store a workflow run created in `root`, in a session of its own."""
    tracking.start_workflow_run(root, "tiny")
    env = {k: v for k, v in os.environ.items() if k != tracking.URI_ENV}  # ./mlflow/mlflow.db
    hierpipe = Path(sys.executable).parent / "hierpipe"
    return subprocess.Popen(
        [str(hierpipe), "ui", "--port", str(port)],
        cwd=root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # mlflow ui starts workers: stop the whole group afterwards
    )


def test_ui_serves_the_store(tmp_path):
    port = _free_port()
    server = _start_ui(tmp_path, port)
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    answer = json.load(response)
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, "hierpipe ui exited"
                assert time.monotonic() < deadline, "the UI did not answer within 60 s"
                time.sleep(0.5)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
    assert "tiny" in {experiment["name"] for experiment in answer["experiments"]}


def _process_groups() -> dict[int, int]:
    """Every live process of this machine: pid -> process group (zombies left out)."""
    groups = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if fields[0] != "Z":
            groups[int(stat.parent.name)] = int(fields[2])
    return groups


def _children(pid: int) -> list[int]:
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            children.append(int(stat.parent.name))
    return children


def test_ui_stopped_by_sigterm_stops_mlflow_and_its_workers(tmp_path):
    port = _free_port()
    server = _start_ui(tmp_path, port)
    url = f"http://127.0.0.1:{port}/api/2.0/mlflow/experiments/search?max_results=10"
    ui_group = None
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=5).close()
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, "hierpipe ui exited"
                assert time.monotonic() < deadline, "the UI did not answer within 60 s"
                time.sleep(0.5)
        (ui_group,) = _children(server.pid)  # mlflow ui, leader of its own group
        workers = [pid for pid, group in _process_groups().items() if group == ui_group]
        assert len(workers) >= 2, workers  # mlflow ui and at least one uvicorn worker
        os.kill(server.pid, signal.SIGTERM)  # hierpipe ui only, as `kill` or a scheduler does
        assert server.wait(timeout=60) == 0  # mlflow ui shuts down cleanly on the forwarded TERM
        left = [pid for pid, group in _process_groups().items() if group == ui_group]
        assert left == [], f"processes of mlflow ui left running: {left}"
        with socket.socket() as probe:  # and nothing listens on the port any more
            # SO_REUSEADDR: the connections the UI closed may linger in TIME_WAIT on the port,
            # which only a listener, not they, should fail this bind for
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
            probe.listen(1)
    finally:
        for group in (server.pid, ui_group):
            if group is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(group, signal.SIGKILL)
        server.wait(timeout=30)


def test_snakemake_hooks_create_and_end_the_parent_run(tmp_path, tiny_params):
    shutil.copy(REPO / "Snakefile", tmp_path / "Snakefile")
    shutil.copytree(REPO / "workflow", tmp_path / "workflow")
    write_yaml(tiny_params, tmp_path / "params/tiny.yaml")
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}

    def snakemake(*args: str) -> subprocess.CompletedProcess:
        # targets before the options: --configfile takes every value that follows it
        command = [sys.executable, "-m", "snakemake", *args, "--cores", "1"]
        options = ["--configfile", "params/tiny.yaml"]
        return subprocess.run(
            [*command, *options], cwd=tmp_path, env=env, capture_output=True, text=True
        )

    dry = snakemake("-n")
    assert dry.returncode == 0, dry.stderr[-3000:]
    assert not (tmp_path / "mlflow").exists()

    target = "data/shapes/samples.parquet"
    real = snakemake(target)
    assert real.returncode == 0, real.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow/mlflow.db")
    experiment = client.get_experiment_by_name("tiny")
    (parent,) = client.search_runs([experiment.experiment_id])
    assert parent.info.status == "FINISHED"


def test_a_run_stopped_by_a_non_finite_loss_is_failed_in_mlflow(
    tiny_params,
    data_root,
    tmp_path,
    monkeypatch,
):
    from test_run_steps import _poison_regularizer_once

    parent_id = tracking.start_workflow_run(tmp_path, "tiny")
    config = _config(tiny_params, data_root, model="pa_hier", epochs=2)
    _poison_regularizer_once(monkeypatch, call=1)
    out = tmp_path / "run"
    with pytest.raises(HierpipeError, match="epoch 1, step 1: non-finite loss"):
        train_run(config, out / "model.pt", out / "train_log.parquet", out / "checkpoint")
    tracking.end_workflow_run("FAILED")
    client = MlflowClient(os.environ[tracking.URI_ENV])
    (train,) = client.search_runs(
        [client.get_run(parent_id).info.experiment_id],
        f"tags.mlflow.parentRunId = '{parent_id}'",
    )
    assert train.info.run_name == f"shapes/{config.run_id}/train"
    assert train.info.status == "FAILED"
    assert client.get_run(parent_id).info.status == "FAILED"
