"""Wall time of `snakemake -n` for the papers' grids against the default experiment.

    python benchmarks/dry_run.py [--repeat 3]

Runs in the repository root. The default experiment's dry run is the baseline of the same
invocation (machine load moves both); the target is a dry run of each grid under 10 s.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TARGET_SECONDS = 10.0
EXPERIMENTS: dict[str, tuple[str, ...]] = {
    "default": (),
    "proxydr": ("--configfile", "params/proxydr.yaml"),
    "hier": ("--configfile", "params/hier.yaml"),
}


def dry_run_seconds(args: tuple[str, ...]) -> float:
    """Wall time of one dry run; fails loudly if the dry run itself fails."""
    command = [sys.executable, "-m", "snakemake", "--dry-run", *args]
    started = time.perf_counter()
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=False)
    elapsed = time.perf_counter() - started
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3, help="dry runs per experiment")
    repeat = parser.parse_args().repeat

    best = {
        name: min(dry_run_seconds(args) for _ in range(repeat))
        for name, args in EXPERIMENTS.items()
    }
    baseline = best["default"]
    print(f"{'experiment':<10} {'best of ' + str(repeat):>10} {'vs default':>11}  target")
    for name, seconds in best.items():
        verdict = "ok" if seconds <= TARGET_SECONDS else f"over {TARGET_SECONDS:.0f} s"
        print(f"{name:<10} {seconds:>9.2f}s {seconds / baseline:>10.2f}x  {verdict}")
    return 0 if all(seconds <= TARGET_SECONDS for seconds in best.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
