"""`hierpipe weights fetch` and the workflow's fetch_weights rules: a published checkpoint
served over 127.0.0.1 becomes the state dict training loads, its sha256 checked against the
digits its name carries and recorded; training itself never downloads."""

import hashlib
import subprocess
import sys

import pytest
import timm
import torch
from conftest import REPO, one_line_error
from http_server import serve_directory

from hierpipe.cli import main
from hierpipe.core import catalog
from hierpipe.models import EmbeddingNet

BACKBONE = "resnet10t"


@pytest.fixture
def published(tmp_path):
    """A checkpoint as the hub publishes one: the whole model, classifier included, in a file
    named <backbone>-<first 8 hex digits of its sha256>.pth; (folder, name, state dict)."""
    folder = tmp_path / "hub"
    folder.mkdir()
    state = timm.create_model(BACKBONE, num_classes=1000).state_dict()
    torch.save(state, folder / "checkpoint.pth")
    prefix = hashlib.sha256((folder / "checkpoint.pth").read_bytes()).hexdigest()[:8]
    name = f"{BACKBONE}-{prefix}.pth"
    (folder / "checkpoint.pth").rename(folder / name)
    return folder, name, state


def _register(monkeypatch, url: str, prefix: str | None) -> None:
    source = catalog.PretrainedWeights(url, "a test checkpoint", prefix)
    monkeypatch.setitem(catalog.PRETRAINED_WEIGHTS, BACKBONE, source)


def test_fetched_weights_are_the_backbone_without_its_classifier(tmp_path, published, monkeypatch):
    folder, name, state = published
    out = tmp_path / "weights" / f"{BACKBONE}.pth"
    with serve_directory(folder) as server:
        _register(monkeypatch, f"{server.url}/{name}", name.split("-")[1][:8])
        assert main(["weights", "fetch", BACKBONE, "--out", str(out)]) == 0
    saved = torch.load(out, weights_only=True)
    assert set(saved) == {key for key in state if not key.startswith("fc.")}
    assert all(torch.equal(saved[key], state[key]) for key in saved)
    # the file training loads, exactly
    net = EmbeddingNet(BACKBONE, 8, head="sphere", pretrained=True, weights=out)
    assert all(torch.equal(net.backbone.state_dict()[key], state[key]) for key in saved)
    recorded = (out.parent / f"{BACKBONE}.pth.sha256").read_text().split()
    assert recorded[0] == hashlib.sha256((folder / name).read_bytes()).hexdigest()


def test_a_file_whose_sha256_does_not_match_its_name_is_refused(
    tmp_path, published, monkeypatch, capsys
):
    folder, name, _ = published
    out = tmp_path / "weights" / f"{BACKBONE}.pth"
    with serve_directory(folder) as server:
        _register(monkeypatch, f"{server.url}/{name}", "00000000")
        line = one_line_error(capsys, ["weights", "fetch", BACKBONE, "--out", str(out)])
    assert "does not start with 00000000" in line and "download" in line and "--url" in line
    assert not out.exists()


def test_a_later_download_must_match_the_recorded_sha256(tmp_path, published, monkeypatch, capsys):
    folder, name, _ = published
    out = tmp_path / "weights" / f"{BACKBONE}.pth"
    recorded = out.parent / f"{BACKBONE}.pth.sha256"
    out.parent.mkdir()
    recorded.write_text(f"{'0' * 64}  an earlier source\n")
    with serve_directory(folder) as server:
        _register(monkeypatch, f"{server.url}/{name}", None)
        line = one_line_error(capsys, ["weights", "fetch", BACKBONE, "--out", str(out)])
    assert f"but {recorded} recorded {'0' * 64}" in line
    assert not out.exists()


def test_a_missing_file_and_an_unknown_backbone_say_how_to_get_the_weights(
    tmp_path, monkeypatch, capsys
):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = str(tmp_path / "weights.pth")
    with serve_directory(empty) as server:
        _register(monkeypatch, f"{server.url}/{BACKBONE}-12345678.pth", "12345678")
        line = one_line_error(capsys, ["weights", "fetch", BACKBONE, "--out", out])
    assert f"{BACKBONE}-12345678.pth" in line and "by hand and pass it as --url" in line
    line = one_line_error(capsys, ["weights", "fetch", "convnext_tiny", "--out", out])
    assert "no known source of pretrained weights" in line and "--url" in line


def test_the_paper_grids_fetch_each_weights_file_once_before_training():
    dry_run = subprocess.run(
        [sys.executable, "-m", "snakemake", "-n", "--configfile", "params/hier.yaml"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert dry_run.returncode == 0, dry_run.stderr[-3000:]
    # four backbones with published weights: ResNet-50, DeiT-S, DINO and AugReg ViT-S
    rules = {line.split()[0] for line in dry_run.stdout.splitlines() if line.startswith("fetch_")}
    assert rules == {f"fetch_weights_{i}" for i in range(4)}
    assert "output: weights/resnet50.pth" in dry_run.stdout
