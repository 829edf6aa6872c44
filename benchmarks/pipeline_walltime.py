"""Wall time of the default experiment, `snakemake --cores all`, from a fresh working copy.

Measured in parts: everything up to the tables (data, training, export, evaluation,
aggregation), then the figures (a second Snakemake invocation, so its start-up counts), then
`snakemake --report results/<experiment>/report.zip`. Targets on 2 cores: the pipeline up to
the tables within 5 minutes (issue: the embedded default, whose pipeline ended there), the
figures and the report at most 60 s on top (issue: results people can read). The
baseline measured in the same run is the workflow's dry run, i.e. the fixed cost of starting
Snakemake, validating params and building the DAG; the ratios say how much of the wall time
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
REPORT_TARGET_SECONDS = 60.0


def _timed_snakemake(workdir: Path, params: str, *extra: str) -> float:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "snakemake", *extra, "--cores", "all", "--configfile", params],
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
        tables = _timed_snakemake(workdir, args.params, "--until", "aggregate")
        figures = _timed_snakemake(workdir, args.params)
        (results,) = (workdir / "results").iterdir()
        report = _timed_snakemake(workdir, args.params, "--report", str(results / "report.zip"))
        print((results / "summary.md").read_text())
    added = figures + report
    full = tables + added
    print(f"machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    print(f"{'measure':<34}{'seconds':>10}{'ratio':>10}")
    print(f"{'dry run (baseline)':<34}{dry:>10.1f}{1.0:>10.2f}")
    print(f"{'pipeline up to the tables':<34}{tables:>10.1f}{tables / dry:>10.2f}")
    print(f"{'figures':<34}{figures:>10.1f}{figures / dry:>10.2f}")
    print(f"{'snakemake --report':<34}{report:>10.1f}{report / dry:>10.2f}")
    print(f"{'all of it':<34}{full:>10.1f}{full / dry:>10.2f}")
    print(
        f"pipeline up to the tables within {TARGET_SECONDS:.0f} s: {tables <= TARGET_SECONDS} "
        f"({tables / TARGET_SECONDS:.0%} of it)"
    )
    print(
        f"figures and report within {REPORT_TARGET_SECONDS:.0f} s on top: "
        f"{added <= REPORT_TARGET_SECONDS} ({added / REPORT_TARGET_SECONDS:.0%} of it)"
    )


if __name__ == "__main__":
    main()
