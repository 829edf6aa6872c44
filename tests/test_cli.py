"""The `hierpipe` command: help for every verb, one-line errors, nothing partial left behind."""

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from conftest import one_line_error

from hierpipe.cli import main

VERBS = [
    ["data", "prepare"],
    ["data", "split"],
    ["train"],
    ["embed"],
    ["evaluate"],
    ["aggregate"],
    ["measure"],
]


def hierpipe(*args: str) -> subprocess.CompletedProcess:
    """The installed console script, as Snakemake rules call it."""
    script = Path(sys.executable).parent / "hierpipe"
    return subprocess.run([str(script), *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("verb", VERBS, ids=" ".join)
def test_every_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*verb, "--help"])
    assert exit_info.value.code == 0
    assert "usage: hierpipe" in capsys.readouterr().out


def test_unknown_dataset_is_one_line(capsys, tmp_path):
    line = one_line_error(capsys, ["data", "prepare", "imagenet", "--out", str(tmp_path / "x")])
    assert line.startswith("hierpipe data prepare: error:") and "unknown dataset 'imagenet'" in line
    assert not (tmp_path / "x").exists()


def test_unknown_dataset_option_is_named(capsys, tmp_path):
    line = one_line_error(
        capsys, ["data", "prepare", "shapes", "--out", str(tmp_path), "--option", "colour=red"]
    )
    assert "colour" in line


def test_missing_config_is_named(capsys, tmp_path):
    missing = tmp_path / "nope.yaml"
    line = one_line_error(
        capsys,
        [
            "train",
            "--config",
            str(missing),
            "--model-out",
            str(tmp_path / "m.pt"),
            "--log-out",
            str(tmp_path / "l.parquet"),
            "--checkpoint-dir",
            str(tmp_path / "c"),
        ],
    )
    assert str(missing) in line and "not found" in line


def test_empty_class_stops_the_split_and_writes_nothing(tmp_path):
    root = tmp_path / "shapes"
    prepared = hierpipe(
        "data",
        "prepare",
        "shapes",
        "--out",
        str(root),
        "--option",
        "images_per_class=4",
        "--option",
        "image_size=16",
    )
    assert prepared.returncode == 0, prepared.stderr
    samples = pd.read_parquet(root / "samples.parquet")
    samples[samples["label"] != 5].to_parquet(root / "samples.parquet", index=False)
    result = hierpipe(
        "data",
        "split",
        str(root),
        "--name",
        "s",
        "--scheme",
        "by_image",
        "--fractions",
        "train=0.5,test=0.5",
        "--seed",
        "0",
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("hierpipe data split: error:")
    assert "empty class" in result.stderr and "5 'circle-striped-small_tilted'" in result.stderr
    assert not (root / "splits").exists()


def test_threads_limit_every_thread_pool(monkeypatch):
    """A cluster job's allocation: torch, BLAS and numba all run on `--threads` threads."""
    import torch

    from hierpipe.cli import _limit_threads

    before = torch.get_num_threads()
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
        # recorded, so that teardown restores the variable (or its absence) for later tests
        monkeypatch.setenv(name, "unset by the test")
    try:
        _limit_threads(1)
        assert torch.get_num_threads() == 1
        assert os.environ["OMP_NUM_THREADS"] == os.environ["NUMBA_NUM_THREADS"] == "1"
        assert os.environ["OPENBLAS_NUM_THREADS"] == os.environ["MKL_NUM_THREADS"] == "1"
    finally:
        torch.set_num_threads(before)
