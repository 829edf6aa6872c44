"""Wall time of the default experiment, `snakemake --cores all`, from a fresh working copy.

Measured in parts: everything up to the tables (data, training, export, evaluation,
aggregation), then the figures (a second Snakemake invocation, so its start-up counts), then
`snakemake --report results/<experiment>/report.zip`. Targets on 2 cores: the pipeline up to
the tables within 5 minutes (issue: the embedded default, whose pipeline ended there), the
figures and the report at most 60 s on top (issue: results people can read), all of it within
240 s with at most 35 % of the jobs' time spent outside training (issue: speed; job times
from each rule's `benchmark:` file). The
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
FULL_TARGET_SECONDS = 240.0
OUTSIDE_TRAINING_TARGET = 0.35


def job_seconds(workdir: Path) -> dict[str, float]:
    """Seconds of every job by rule, from the `benchmark:` files the workflow wrote."""
    seconds: dict[str, float] = {}
    for path in (workdir / "logs" / "benchmarks").rglob("*.tsv"):
        rule = path.stem.split("-")[0] if path.parent.name != "figures" else "figures"
        with path.open() as handle:
            header, *rows = [line.rstrip("\n").split("\t") for line in handle]
        column = header.index("s")
        seconds[rule] = seconds.get(rule, 0.0) + sum(float(row[column]) for row in rows)
    return seconds


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
        jobs = job_seconds(workdir)
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
    total = sum(jobs.values())
    print(f"job seconds by rule (all jobs, {total:.0f} s):")
    for rule, seconds in sorted(jobs.items(), key=lambda item: -item[1]):
        print(f"  {rule:<20}{seconds:>8.1f}{seconds / total:>8.0%}")
    outside = 1 - jobs.get("train", 0.0) / total
    print(
        f"whole experiment with figures within {FULL_TARGET_SECONDS:.0f} s: "
        f"{full <= FULL_TARGET_SECONDS} ({full:.1f} s); share of job time outside training "
        f"(start-up, data, export, evaluation, figures) {outside:.0%}, target at most "
        f"{OUTSIDE_TRAINING_TARGET:.0%}: {outside <= OUTSIDE_TRAINING_TARGET}"
    )


if __name__ == "__main__":
    main()
