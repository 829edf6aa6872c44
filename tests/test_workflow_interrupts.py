"""The workflow under interruption: a training job SIGKILLed mid-run is retried by Snakemake
(`--retries`) and resumes from its checkpoint; Snakemake itself SIGKILLed leaves no output
that looks complete, and `--unlock` then `--rerun-incomplete` finishes the run. Either way
the final model equals an uninterrupted workflow's, bit for bit (CPU). Each test prints what
it survived."""

import copy
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from conftest import REPO, TINY_PARAMS, write_yaml

pytestmark = pytest.mark.slow

RUN = "results/tiny/shapes/softmax-standard-s1"
TARGET = f"{RUN}/metrics.json"


def _workflow(root: Path) -> Path:
    """A workflow copy whose one run (softmax, 6 epochs) is long enough to interrupt."""
    root.mkdir()
    shutil.copy(REPO / "Snakefile", root / "Snakefile")
    shutil.copytree(REPO / "workflow", root / "workflow")
    params = copy.deepcopy(TINY_PARAMS)
    params["runs"] = [{"model": "softmax"}]
    params["train"]["epochs"] = 6
    write_yaml(params, root / "params/tiny.yaml")
    return root


def _snakemake(root: Path, *args: str) -> list[str]:
    # targets before the options: --configfile takes every value that follows it
    return [
        sys.executable,
        "-m",
        "snakemake",
        TARGET,
        "--cores",
        "1",
        *args,
        "--configfile",
        "params/tiny.yaml",
    ]


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "HIERPIPE_MLFLOW": "0",
    }


def _checkpoint_epoch(root: Path) -> int:
    path = root / RUN / "checkpoint/last.pt"
    if not path.exists():
        return 0
    try:
        return torch.load(path, weights_only=True)["state"]["epoch"]
    except (OSError, RuntimeError):  # removed between the check and the read: run finished
        return 0


def _wait_for_epoch(root: Path, job: subprocess.Popen, epoch: int) -> None:
    while _checkpoint_epoch(root) < epoch:
        assert job.poll() is None, "the workflow ended before the checkpoint to interrupt"
        time.sleep(0.05)


def _training_job(snakemake: subprocess.Popen) -> psutil.Process:
    for child in psutil.Process(snakemake.pid).children(recursive=True):
        command = " ".join(child.cmdline())
        if "hierpipe" in command and " train " in command and "gpu_slots" not in command:
            return child
    raise AssertionError("no hierpipe train process under Snakemake")


def _model(root: Path) -> dict:
    return torch.load(root / RUN / "model.pt", weights_only=True)["net"]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    root = _workflow(tmp_path_factory.mktemp("reference") / "workflow")
    result = subprocess.run(
        _snakemake(root), cwd=root, env=_env(), capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return _model(root)


def _assert_same_model(root: Path, reference: dict) -> None:
    model = _model(root)
    assert model.keys() == reference.keys()
    assert all(torch.equal(model[key], reference[key]) for key in model)


def test_a_killed_training_job_is_retried_and_resumes(uninterrupted, tmp_path):
    root = _workflow(tmp_path / "workflow")
    job = subprocess.Popen(
        _snakemake(root, "--retries", "1"),
        cwd=root,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    _wait_for_epoch(root, job, 2)
    _training_job(job).send_signal(signal.SIGKILL)
    killed_after = _checkpoint_epoch(root)
    output = job.communicate(timeout=900)[0]
    assert job.returncode == 0, output[-3000:]
    assert "Trying to restart job" in output
    _assert_same_model(root, uninterrupted)
    print(f"training job SIGKILLed after epoch {killed_after}: retried, resumed, bitwise equal")


def test_a_killed_workflow_leaves_nothing_that_looks_complete(uninterrupted, tmp_path):
    root = _workflow(tmp_path / "workflow")
    job = subprocess.Popen(
        _snakemake(root),
        cwd=root,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: Snakemake and its jobs die together
    )
    _wait_for_epoch(root, job, 2)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    killed_after = _checkpoint_epoch(root)
    run = root / RUN
    # the training job's declared outputs appear only complete (atomic renames)
    assert not (run / "model.pt").exists() and not (run / "train_log.parquet").exists()
    # a killed Snakemake leaves its lock: the documented recovery is --unlock, then rerun
    unlock = subprocess.run(
        _snakemake(root, "--unlock"), cwd=root, env=_env(), capture_output=True, text=True
    )
    assert unlock.returncode == 0, unlock.stderr[-3000:]
    rerun = subprocess.run(
        _snakemake(root, "--rerun-incomplete"),
        cwd=root,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    _assert_same_model(root, uninterrupted)
    print(
        f"Snakemake and its job SIGKILLed after epoch {killed_after}: no complete-looking "
        "output left; --rerun-incomplete resumed, bitwise equal"
    )
