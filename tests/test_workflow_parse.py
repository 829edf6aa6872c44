"""Parsing the workflow needs Snakemake alone: a dry run of each experiment with torch,
timm, MLflow, UMAP and the rest of hierpipe's stack made unimportable. (numpy and pandas
stay: the SLURM executor plugin, loaded by Snakemake at start, imports them.)"""

import shutil
import subprocess
import sys

import pytest
from conftest import REPO, TINY_PARAMS, write_yaml

# hierpipe's heavy dependencies; snakemake itself needs none of them
BLOCKED = (
    "torch",
    "torchvision",
    "timm",
    "geoopt",
    "mlflow",
    "umap",
    "pyarrow",
    "scipy",
    "sklearn",
    "matplotlib",
    "dendropy",
)

DRY_RUN = f"""
import importlib.abc, sys

class Unimportable(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {BLOCKED!r}:
            raise ImportError(f"{{name}} is not installed on this host (blocked by the test)")
        return None

sys.meta_path.insert(0, Unimportable())
from snakemake.cli import main
sys.argv = ["snakemake", *sys.argv[1:]]
main()
"""


@pytest.mark.parametrize(
    "params",
    [
        "params/default.yaml",
        "params/proxydr.yaml",
        "params/hier.yaml",
        "params/proxydr_shapes.yaml",
        "params/hier_shapes.yaml",
    ],
)
def test_dry_run_imports_no_heavy_dependency(params):
    result = subprocess.run(
        [sys.executable, "-c", DRY_RUN, "--dry-run", "--configfile", params],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "This was a dry-run" in result.stdout
    assert "blocked by the test" not in result.stdout + result.stderr


def test_the_blocker_blocks():
    """The check above would pass vacuously if the blocker let torch through."""
    result = subprocess.run(
        [sys.executable, "-c", DRY_RUN.replace("from snakemake.cli import main", "import torch")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "torch is not installed on this host (blocked by the test)" in result.stderr


def test_a_missing_image_stops_the_workflow_naming_it_and_its_build_command(tmp_path):
    for name in ("Snakefile", "workflow", "params"):
        source = REPO / name
        copy = shutil.copytree if source.is_dir() else shutil.copy
        copy(source, tmp_path / name)
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "1", "--use-singularity"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    line = next(
        line for line in result.stderr.splitlines() if "containers/hierpipe-0.1.0.sif:" in line
    )
    assert "no such image file; build it with `apptainer build " in line
    assert "docker/hierpipe.def" in line
    assert not (tmp_path / "data").exists() and not (tmp_path / "mlflow").exists()


def _job_blocks(dry_run: str) -> dict[str, list[str]]:
    """rule name -> the `threads:` and `resources:` lines of each of its jobs in a dry run."""
    blocks: dict[str, list[str]] = {}
    rule = None
    for line in dry_run.splitlines():
        words = line.strip().split()
        if words[:1] in (["rule"], ["localrule"]) and line.rstrip().endswith(":"):
            rule = words[1].rstrip(":")
            blocks.setdefault(rule, [])
        elif rule and line.strip().startswith(("threads:", "resources:")):
            blocks[rule].append(line.strip())
    return blocks


def test_what_jobs_ask_for_comes_from_params(tmp_path):
    for name in ("Snakefile", "workflow"):
        copy = shutil.copytree if (REPO / name).is_dir() else shutil.copy
        copy(REPO / name, tmp_path / name)
    params = {
        **TINY_PARAMS,
        "runs": [{"model": "softmax"}],
        "resources": {
            "training": {"gpus": 1, "threads": 3, "mem_mb": 1234, "runtime": 7},
            "other": {"threads": 2, "mem_mb": 555, "runtime": 3},
        },
    }
    write_yaml(params, tmp_path / "params/tiny.yaml")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "snakemake",
            "-n",
            "--cores",
            "4",
            "--configfile",
            "params/tiny.yaml",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    blocks = _job_blocks(result.stdout)
    for rule in ("train", "embed"):
        threads, resources = blocks[rule]
        assert threads == "threads: 3"
        assert "gpu=1" in resources and "mem_mb=1234" in resources and "runtime=7" in resources
    for rule in ("prepare_dataset", "split_dataset", "evaluate", "figures_maps", "aggregate"):
        lines = blocks[rule]
        assert "threads: 2" in lines, (rule, lines)
        (resources,) = [line for line in lines if line.startswith("resources:")]
        assert "mem_mb=555" in resources and "runtime=3" in resources and "gpu" not in resources
