"""`hierpipe train` killed with SIGKILL at random points, checkpoint writes included, then run
again until it finishes: the model and the training log equal an uninterrupted run's, bit for
bit (CPU). Each test prints what it survived."""

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from test_run_steps import _config

from hierpipe.core.config import write_run_config

pytestmark = pytest.mark.slow

EPOCHS = 6


def _command(run: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hierpipe.cli",
        "train",
        "--config",
        str(run / "config.yaml"),
        "--model-out",
        str(run / "model.pt"),
        "--log-out",
        str(run / "train_log.parquet"),
        "--checkpoint-dir",
        str(run / "checkpoint"),
        "--threads",
        "1",
    ]


def _run_dir(tmp_path: Path, name: str, config) -> Path:
    run = tmp_path / name
    run.mkdir()
    write_run_config(config, run / "config.yaml")
    return run


def _finish(run: Path) -> None:
    result = subprocess.run(_command(run), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def _checkpoint_epoch(run: Path) -> int:
    path = run / "checkpoint/last.pt"
    if not path.exists():
        return 0
    # replaced atomically: whatever is under the name is complete
    return torch.load(path, weights_only=True)["state"]["epoch"]


def _kill_after_epoch(run: Path, epoch: int, delay: float) -> bool:
    """Start the job, SIGKILL it `delay` s after its checkpoint reaches `epoch` (somewhere
    in the next epoch); True if it was still running then."""
    job = subprocess.Popen(_command(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while job.poll() is None and _checkpoint_epoch(run) < epoch:
        time.sleep(0.01)
    time.sleep(delay)
    if job.poll() is not None:
        return False
    job.send_signal(signal.SIGKILL)
    job.wait()
    return True


def _kill_during_checkpoint_write(run: Path) -> bool:
    """Start the job and SIGKILL it the moment a checkpoint's temporary file appears."""
    job = subprocess.Popen(_command(run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint_dir = run / "checkpoint"
    while job.poll() is None:
        if checkpoint_dir.is_dir() and any(checkpoint_dir.glob(".last.pt.*.tmp")):
            job.send_signal(signal.SIGKILL)
            job.wait()
            return True
        time.sleep(0.001)
    return False


def _assert_same_outputs(run: Path, reference: Path) -> None:
    ours = torch.load(run / "model.pt", weights_only=True)
    theirs = torch.load(reference / "model.pt", weights_only=True)
    for part in ("net", "objective"):
        assert ours[part].keys() == theirs[part].keys()
        for key, tensor in ours[part].items():
            assert torch.equal(tensor, theirs[part][key]), f"{part}.{key}"
    pd.testing.assert_frame_equal(
        pd.read_parquet(run / "train_log.parquet"),
        pd.read_parquet(reference / "train_log.parquet"),
    )
    assert not (run / "checkpoint").exists()


@pytest.fixture(scope="module")
def reference(tiny_params_module, data_root, tmp_path_factory):
    config = _config(tiny_params_module, data_root, model="proxydr", epochs=EPOCHS)
    run = _run_dir(tmp_path_factory.mktemp("reference"), "run", config)
    _finish(run)
    return config, run


@pytest.fixture(scope="module")
def tiny_params_module():
    import copy

    from conftest import TINY_PARAMS

    return copy.deepcopy(TINY_PARAMS)


def test_killed_at_random_points_resumes_to_the_same_bits(reference, tmp_path):
    config, reference_run = reference
    run = _run_dir(tmp_path, "run", config)
    rng = random.Random(0)
    survived = []
    # before the first checkpoint, during one epoch, during a checkpoint write, during another
    if _kill_after_epoch(run, 0, rng.uniform(0.5, 2.0)):
        survived.append(f"kill at epoch {_checkpoint_epoch(run)} (before any checkpoint)")
    if _kill_after_epoch(run, 1, rng.uniform(0.0, 0.2)):
        survived.append(f"kill after epoch {_checkpoint_epoch(run)} was saved")
    if _kill_during_checkpoint_write(run):
        survived.append(
            f"kill while writing a checkpoint (last complete: {_checkpoint_epoch(run)})"
        )
    if _kill_after_epoch(run, 4, rng.uniform(0.0, 0.2)):
        survived.append(f"kill after epoch {_checkpoint_epoch(run)} was saved")
    _finish(run)
    _assert_same_outputs(run, reference_run)
    print("survived: " + "; ".join(survived) + "; final model and log bitwise equal")
    assert len(survived) >= 3


def test_a_damaged_checkpoint_is_never_loaded(reference, tmp_path):
    config, reference_run = reference
    run = _run_dir(tmp_path, "run", config)
    (run / "checkpoint").mkdir()
    # a truncated file under the final name, as only damage from outside could leave it
    (run / "checkpoint/last.pt").write_bytes(b"PK\x03\x04 truncated")
    _finish(run)
    _assert_same_outputs(run, reference_run)
    print("a truncated checkpoint was refused and the run started over; bitwise equal")


def test_a_leftover_temporary_file_is_ignored(reference, tmp_path):
    config, reference_run = reference
    run = _run_dir(tmp_path, "run", config)
    (run / "checkpoint").mkdir()
    (run / "checkpoint/.last.pt.0123abcd.tmp").write_bytes(os.urandom(64))
    _finish(run)
    _assert_same_outputs(run, reference_run)
