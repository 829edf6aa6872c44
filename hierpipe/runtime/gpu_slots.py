"""One GPU per job on a multi-GPU host: `python -m hierpipe.runtime.gpu_slots run -- <command...>`.

Snakemake caps how many GPU jobs run at once (`--resources gpu=N`) but tells no job which GPU
to use, so without this every job lands on GPU 0. The wrapper takes an exclusive `flock` on
one slot file per GPU, runs the command with `CUDA_VISIBLE_DEVICES` (and
`APPTAINERENV_CUDA_VISIBLE_DEVICES`, for a command that itself starts `apptainer`) set to
that GPU, and exits with the command's status. The kernel drops a flock when its process
ends, so a slot is freed even when the wrapper is killed.

GPUs come from `HIERPIPE_GPUS` (comma-separated indices or UUIDs; empty = none), else from
`nvidia-smi -L`. With no GPU, or when a batch scheduler has already set
`CUDA_VISIBLE_DEVICES`, the command runs with its environment untouched.

Inside a SLURM job (`SLURM_JOB_ID` set) the allocation decides: the command sees exactly the
GPUs SLURM gave the job (`CUDA_VISIBLE_DEVICES`; none when it gave none) and no lock file is
taken, since the working directory is shared with jobs on other nodes.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

GPUS_ENV = "HIERPIPE_GPUS"
SLURM_JOB_ENV = "SLURM_JOB_ID"
# What a SLURM job's container must see of its allocation: passed as APPTAINERENV_<NAME>,
# which Apptainer sets even under --cleanenv (the Snakefile does it in each job's process)
SLURM_ALLOCATION = ("SLURM_JOB_ID", "SLURM_JOB_GPUS", "SLURM_STEP_GPUS", "CUDA_VISIBLE_DEVICES")
LOCK_DIR_ENV = "HIERPIPE_GPU_LOCK_DIR"
DEFAULT_LOCK_DIR = Path(".snakemake/gpu-slots")
DEVICE_VARIABLES = ("CUDA_VISIBLE_DEVICES", "APPTAINERENV_CUDA_VISIBLE_DEVICES")
POLL_SECONDS = 0.2


def detect_gpus(environ: Mapping[str, str] | None = None) -> list[str]:
    """The GPUs this host offers to jobs, as CUDA_VISIBLE_DEVICES values."""
    environ = os.environ if environ is None else environ
    if GPUS_ENV in environ:
        return [gpu.strip() for gpu in environ[GPUS_ENV].split(",") if gpu.strip()]
    if "CUDA_VISIBLE_DEVICES" in environ or shutil.which("nvidia-smi") is None:
        return []
    listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    if listing.returncode != 0:
        return []
    # MIG instances are listed as indented lines under their GPU: count only the GPUs
    physical = [line for line in listing.stdout.splitlines() if line.startswith("GPU ")]
    return [str(index) for index in range(len(physical))]


def _slot_file(lock_dir: Path, gpu: str) -> Path:
    # UUIDs and MIG ids contain characters that are awkward in file names
    return lock_dir / f"gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', gpu)}.lock"


@contextmanager
def acquire_slot(gpus: Sequence[str], lock_dir: Path) -> Iterator[str]:
    """Hold an exclusive lock on one free GPU's slot; wait while all are taken."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    while True:
        for gpu in gpus:
            handle = _slot_file(lock_dir, gpu).open("a")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            try:
                yield gpu
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)
                handle.close()
            return
        time.sleep(POLL_SECONDS)


def _exit_status(returncode: int) -> int:
    # a child killed by a signal reports -signum; shells report it as 128 + signum
    return 128 - returncode if returncode < 0 else returncode


def run_in_slurm_allocation(command: Sequence[str], environ: Mapping[str, str]) -> int:
    """Run `command` on the GPUs SLURM allocated to the job `environ` describes."""
    gpus = environ.get("CUDA_VISIBLE_DEVICES", "")
    # a job step (srun, as the executor plugin runs jobs) names its GPUs as SLURM_STEP_GPUS
    allocated = environ.get("SLURM_STEP_GPUS") or environ.get("SLURM_JOB_GPUS", "")
    print(
        f"hierpipe.runtime.gpu_slots: SLURM job {environ['SLURM_JOB_ID']} allocated GPUs "
        f"[{allocated}], running on [{gpus}]",
        file=sys.stderr,
        flush=True,
    )
    return _run_on(command, environ, gpus)


def run(command: Sequence[str], gpus: Sequence[str], lock_dir: Path) -> int:
    """Run `command` on one free GPU (or as it is, without GPUs); return its exit status."""
    if not gpus:
        return _exit_status(subprocess.run(command, check=False).returncode)
    with acquire_slot(gpus, lock_dir) as gpu:
        print(f"hierpipe.runtime.gpu_slots: running on GPU {gpu}", file=sys.stderr, flush=True)
        return _run_on(command, os.environ, gpu)


def _run_on(command: Sequence[str], environ: Mapping[str, str], gpus: str) -> int:
    """Run `command` seeing `gpus` alone (also through a nested apptainer); its exit status."""
    devices = dict.fromkeys(DEVICE_VARIABLES, gpus)
    return _exit_status(subprocess.run(command, env={**environ, **devices}, check=False).returncode)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hierpipe.runtime.gpu_slots",
        description="Run a command on one free GPU slot (file locks), exiting with its status.",
    )
    commands = parser.add_subparsers(dest="action", required=True)
    run_parser = commands.add_parser("run", help="run COMMAND on a free GPU")
    run_parser.add_argument(
        "--lock-dir",
        type=Path,
        default=Path(os.environ.get(LOCK_DIR_ENV, DEFAULT_LOCK_DIR)),
        help=f"directory of the slot lock files (default: ${LOCK_DIR_ENV} or {DEFAULT_LOCK_DIR})",
    )
    run_parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    try:
        if SLURM_JOB_ENV in os.environ:
            return run_in_slurm_allocation(command, os.environ)
        return run(command, detect_gpus(), args.lock_dir)
    except FileNotFoundError as error:
        print(f"hierpipe.runtime.gpu_slots: command not found: {error.filename}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
