"""The GPU, SLURM and Kubernetes profiles: each one dry-runs the default experiment.

The executor plugins are optional (extra `cluster`); their tests skip when a plugin is missing.
A dry run with a container profile still asks `apptainer --version`, which a stand-in
answers here: tests/test_apptainer.py runs the workflow in a real Apptainer.
"""

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO
from test_workflow import _env, _job_counts, _workflow_copy

pytestmark = pytest.mark.slow

PROFILES = REPO / "workflow/profiles"
SNAKEMAKE = (sys.executable, "-m", "snakemake")


# All that a dry run asks of the runtime; any other call is refused.
APPTAINER_VERSION_ONLY = """#!/bin/sh
[ "$1" = --version ] && echo "apptainer version 1.4.5" && exit 0
echo "stand-in apptainer: a dry run should not call $*" >&2
exit 1
"""


def install_apptainer_stand_in(bin_dir: Path) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "apptainer").write_text(APPTAINER_VERSION_ONLY)
    (bin_dir / "apptainer").chmod(0o755)


def _profile(name: str) -> dict:
    return yaml.safe_load((PROFILES / name / "config.yaml").read_text())


def _needs(module: str, package: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{package} is not installed (extra `cluster`)")


def _dry_run(root: Path, profile: str, *args: str) -> subprocess.CompletedProcess:
    install_apptainer_stand_in(root / "bin")
    environ = _env()
    environ["PATH"] = f"{root / 'bin'}{os.pathsep}{environ['PATH']}"
    return subprocess.run(
        [*SNAKEMAKE, "--profile", f"workflow/profiles/{profile}", "--dry-run", *args],
        cwd=root,
        env=environ,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _assert_whole_default_grid(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    counts = _job_counts(result.stdout)
    assert counts["train"] == counts["embed"] == counts["evaluate"] > 0
    assert counts["aggregate"] == 1


def test_gpu_profile_dry_run(tmp_path):
    result = _dry_run(_workflow_copy(tmp_path), "gpu")
    _assert_whole_default_grid(result)
    # the image of params, which a dry run does not need to exist
    assert "containers/hierpipe-0.1.0.sif" in result.stdout + result.stderr


def test_slurm_profile_dry_run(tmp_path):
    _needs("snakemake_executor_plugin_slurm", "snakemake-executor-plugin-slurm")
    _assert_whole_default_grid(_dry_run(_workflow_copy(tmp_path), "slurm"))


def test_kubernetes_profile_dry_run(tmp_path):
    _needs("snakemake_executor_plugin_kubernetes", "snakemake-executor-plugin-kubernetes")
    _needs("snakemake_storage_plugin_fs", "snakemake-storage-plugin-fs")
    # pods share no file system, so the executor insists on a storage provider
    root = tmp_path / "workflow"
    root.mkdir()
    storage = ("--default-storage-provider", "fs", "--default-storage-prefix", str(tmp_path))
    storage += ("--container-image", "registry.example.org/hierpipe:0.1.0")
    _assert_whole_default_grid(_dry_run(_workflow_copy(root), "kubernetes", *storage))


def test_profiles_carry_site_settings_and_no_job_resources():
    gpu = _profile("gpu")
    # one value containing a space: a bare "--nv" is taken for an option
    assert set(gpu["apptainer-args"].split()) >= {"--nv", "--cleanenv"}
    # the host's GPUs: without a cap, `gpu=1` jobs all start at once
    assert any(cap.startswith("gpu=") for cap in gpu["resources"])
    assert gpu["software-deployment-method"] == "apptainer"
    # what a job asks for is params' `resources`, the one place for it
    assert "set-resources" not in _profile("slurm") and "set-threads" not in _profile("slurm")
    assert "default-resources" not in _profile("slurm")  # partition and account: yours to set
    assert _profile("kubernetes")["set-resources"] == {
        rule: {"gpu_manufacturer": "nvidia"} for rule in ("train", "embed")
    }
    for name in ("gpu", "slurm", "kubernetes"):
        assert _profile(name)["max-checksum-file-size"] == "10MB"
    rules = "".join(path.read_text() for path in (REPO / "workflow/rules").glob("*.smk"))
    assert "gpu=" not in rules and "threads: 1" not in rules
