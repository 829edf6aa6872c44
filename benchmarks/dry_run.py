"""Wall time of parsing the workflow and of `snakemake -n`, for the default experiment and
the papers' grids, against Snakemake's own start-up measured in the same run.

    python benchmarks/dry_run.py [--repeat 3] [--python PATH]

Parsing (`snakemake --list-rules`) runs the Snakefile: params validation, the run grid, the
figure plan. The dry run adds the job graph. The baseline is the dry run of a one-rule
Snakefile: what Snakemake costs before hierpipe adds anything. Target: each dry run <= 2 s
on 2 cores, which needs a parse that imports no torch, timm, MLflow or UMAP. `--python`
names the interpreter whose Snakemake runs, e.g. that of a host virtualenv holding only
workflow/host-requirements.txt (no executor plugins to load at start-up).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 2.0
EXPERIMENTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "proxydr": ("--configfile", "params/proxydr.yaml"),
    "hier": ("--configfile", "params/hier.yaml"),
}


def snakemake_seconds(python: str, args: tuple[str, ...], cwd: Path) -> float:
    """Wall time of one Snakemake call; fails loudly if the call itself fails."""
    command = [python, "-m", "snakemake", *args]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="calls per measurement")
    parser.add_argument("--python", default=sys.executable, help="interpreter of the Snakemake")
    options = parser.parse_args()
    repeat, python = options.repeat, options.python

    with tempfile.TemporaryDirectory() as empty:
        Path(empty, "Snakefile").write_text('rule all:\n    output: "x"\n    shell: "touch x"\n')
        baseline = min(
            snakemake_seconds(python, ("--dry-run",), Path(empty)) for _ in range(repeat)
        )
    print(f"Snakemake of {python}")
    print(f"baseline (one-rule Snakefile, dry run): {baseline:.2f} s, best of {repeat}")
    print(f"{'experiment':<10} {'parse':>8} {'dry run':>8} {'vs baseline':>12}  target")
    within = True
    for name, args in EXPERIMENTS.items():
        parse = min(snakemake_seconds(python, ("--list-rules", *args), REPO) for _ in range(repeat))
        dry = min(snakemake_seconds(python, ("--dry-run", *args), REPO) for _ in range(repeat))
        verdict = "ok" if dry <= TARGET_SECONDS else f"over {TARGET_SECONDS:g} s"
        within &= dry <= TARGET_SECONDS
        print(f"{name:<10} {parse:>7.2f}s {dry:>7.2f}s {dry / baseline:>11.2f}x  {verdict}")
    return 0 if within else 1


if __name__ == "__main__":
    sys.exit(main())
