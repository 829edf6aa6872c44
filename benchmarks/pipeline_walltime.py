"""Wall time of the default experiment, `snakemake --cores all`, from a fresh working copy.

The target (issue: the embedded default) is at most 5 minutes on 2 cores. The baseline
measured in the same run is the workflow's dry run, i.e. the fixed cost of starting
Snakemake, validating params and building the DAG; the ratio says how much of the wall time
is real work. Usage: python benchmarks/pipeline_walltime.py [--params params/default.yaml]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 300.0


def _timed_snakemake(workdir: Path, params: str, *extra: str) -> float:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "all", "--configfile", params, *extra],
        cwd=workdir,
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params/default.yaml")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="hierpipe-bench-") as tmp:
        workdir = Path(tmp)
        shutil.copy(REPO / "Snakefile", workdir)
        shutil.copytree(REPO / "workflow", workdir / "workflow")
        shutil.copytree(REPO / "params", workdir / "params")
        dry = _timed_snakemake(workdir, args.params, "--dry-run")
        full = _timed_snakemake(workdir, args.params)
        summary = (workdir / "results").glob("*/summary.md")
        print(next(summary).read_text())
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"{'measure':<34}{'seconds':>10}{'ratio':>10}")
    print(f"{'dry run (baseline)':<34}{dry:>10.1f}{1.0:>10.2f}")
    print(f"{'full default pipeline':<34}{full:>10.1f}{full / dry:>10.2f}")
    print(f"{'target (5 min)':<34}{TARGET_SECONDS:>10.1f}{TARGET_SECONDS / dry:>10.2f}")
    print(f"within target: {full <= TARGET_SECONDS} ({full / TARGET_SECONDS:.0%} of it)")


if __name__ == "__main__":
    main()
