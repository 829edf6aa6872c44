"""Wall time of the tiny experiment through a real one-node SLURM against the same experiment
run locally, in the same run. Target: at most 1.5x the local wall time.

    python benchmarks/slurm_overhead.py [--runs all|4]

Needs root on Debian: it starts SLURM with tests/runtimes/slurm.sh (two fake GPUs, four
CPUs), builds the test image with tests/runtimes/build-test-image.sh (it binds this
virtualenv) and a host virtualenv with Snakemake and the SLURM executor plugin alone, and
stops every daemon at the end. The tiny experiment is the tests' (tests/conftest.py); each
train and embed job asks for one GPU, as on a GPU partition. Through SLURM it runs with a
copy of workflow/profiles/slurm in which the partition and the account are set, locally with
`snakemake --cores 2`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
from conftest import TINY_PARAMS  # noqa: E402  (the tests' tiny experiment)
from real_runtimes import (  # noqa: E402  (the tests' real runtimes)
    build_image,
    host_environment,
    host_virtualenv,
    slurm_cluster,
    slurm_command,
    workflow_checkout,
)

TARGET_RATIO = 1.5


def _timed(command: list[str], cwd: Path, env: dict[str, str]) -> float:
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{(result.stdout + result.stderr)[-3000:]}")
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", default="all", help="'all' runs of the tiny grid, or a count")
    runs = parser.parse_args().runs
    params = {**TINY_PARAMS, "resources": {"training": {"gpus": 1}}}
    if runs != "all":
        params["runs"] = params["runs"][: int(runs)]
    with tempfile.TemporaryDirectory(prefix="hp-bench-", dir="/tmp") as tmp:
        base = Path(tmp)
        image = build_image(base)
        venv = host_virtualenv(base / "host", "snakemake-executor-plugin-slurm")
        with slurm_cluster(cpus=4) as cluster:
            local_env = {**host_environment(), "HIERPIPE_MLFLOW": "0"}
            local_command = [sys.executable, "-m", "snakemake", "--cores", "2"]
            local_root = workflow_checkout(base / "local", params)
            local = _timed(
                [*local_command, "--configfile", "params/tiny.yaml"], local_root, local_env
            )
            root = workflow_checkout(base / "cluster", params)
            command, cluster_env = slurm_command(root, cluster, venv, image, HIERPIPE_MLFLOW="0")
            through_slurm = _timed(command, root, cluster_env)
    ratio = through_slurm / local
    verdict = "met" if ratio <= TARGET_RATIO else "NOT met"
    print(f"tiny experiment, {len(params['runs'])} runs entries, 2 cores")
    print(f"locally (snakemake --cores 2): {local:8.1f} s  (baseline)")
    print(f"through SLURM, jobs in the image: {through_slurm:8.1f} s  {ratio:.2f}x")
    print(f"target <= {TARGET_RATIO}x the local wall time: {verdict}")
    return 0 if ratio <= TARGET_RATIO else 1


if __name__ == "__main__":
    sys.exit(main())
