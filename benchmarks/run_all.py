"""Run every benchmark in this folder, one after the other, and print each one's table.

Each benchmark measures its own baseline in the same run and prints figures and ratios; this
script shows them in turn, then repeats the verdict lines (targets met or not) together.
The pipeline wall-time benchmark takes about 6 minutes on 2 cores, the SOP-scale retrieval
one a few; `--skip` leaves some out. Usage: python benchmarks/run_all.py [--skip NAME ...]
gpu_check.py is not among them: it is the CUDA check, run alone on a GPU machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = (
    "dry_run",
    "hier_loss",
    "training_loop",
    "data_loader",
    "retrieval_scale",
    "pipeline_walltime",
    "slurm_overhead",
)
# lines that state whether a target was met
VERDICTS = ("within", "at least", "faster", "under 4 GB", "same", "local wall time")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip", nargs="*", default=[], choices=BENCHMARKS)
    args = parser.parse_args()
    verdicts = []
    for name in BENCHMARKS:
        if name in args.skip:
            continue
        print(f"\n=== {name} ===", flush=True)
        started = time.perf_counter()
        result = subprocess.run(
            [sys.executable, str(HERE / f"{name}.py")], capture_output=True, text=True
        )
        print(result.stdout, end="")
        if result.returncode != 0:
            print(result.stderr[-2000:], end="")
            verdicts.append((name, f"failed with exit status {result.returncode}"))
            continue
        lines = [line for line in result.stdout.splitlines() if line.startswith(VERDICTS)]
        verdicts += [(name, line) for line in lines]
        print(f"({time.perf_counter() - started:.0f} s)")
    print("\n=== verdicts ===")
    for name, line in verdicts:
        print(f"{name:<20}{line}")


if __name__ == "__main__":
    main()
