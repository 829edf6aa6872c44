"""Ask SLURM, before any job is submitted, whether it would accept what the cluster jobs ask for.

A request a partition cannot meet (more memory, GPUs or CPUs than its nodes have, a time
limit above its MaxTime, an unknown account) is refused by ``sbatch`` at submission. Through
Snakemake the refusal of a grouped job (each run's train, embed and evaluate) reaches the user
as "Error in group run" without SLURM's reason, after the jobs before it have run. So the
workflow's start asks ``sbatch --test-only`` about each distinct request, which submits
nothing, and stops with SLURM's own message when one is refused.

A request holds what SLURM judges against the partition, in the options
snakemake-executor-plugin-slurm submits it with: partition, account, QOS, constraint, time
(``-t`` minutes), memory (``--mem`` MB), CPUs (``--cpus-per-task``, the job's threads) and
GPUs (``--gpus``). This module runs no Snakemake; the Snakefile reads the requests off the
jobs Snakemake will submit, so that a group job's are Snakemake's own (runtime summed over its
jobs, the rest the largest of them).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

from hierpipe.core.errors import HierpipeError


@dataclass(frozen=True, order=True)
class SlurmRequest:
    """What one cluster job asks SLURM for; ``jobs`` names it in messages (a rule or group)."""

    jobs: str
    cpus: int
    gpus: int = 0
    mem_mb: int | None = None
    runtime_minutes: int | None = None
    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    constraint: str | None = None

    def sbatch_options(self) -> list[str]:
        options = [f"--cpus-per-task={self.cpus}"]
        for flag, value in (
            ("--partition", self.partition),
            ("--account", self.account),
            ("--qos", self.qos),
            ("--constraint", self.constraint),
            ("--mem", self.mem_mb),
            ("--time", self.runtime_minutes),
        ):
            if value is not None:
                options.append(f"{flag}={value}")
        if self.gpus:
            options.append(f"--gpus={self.gpus}")
        return options

    def describe(self) -> str:
        parts = [f"{self.cpus} CPUs", f"{self.gpus} GPUs"]
        if self.mem_mb is not None:
            parts.append(f"{self.mem_mb} MB")
        if self.runtime_minutes is not None:
            parts.append(f"{self.runtime_minutes} min")
        where = f"partition {self.partition}" if self.partition else "the default partition"
        return f"{', '.join(parts)} on {where}"


def refusal(request: SlurmRequest, sbatch: str = "sbatch") -> str | None:
    """SLURM's reason for refusing ``request`` (``sbatch --test-only``), None if it accepts."""
    command = [sbatch, "--test-only", *request.sbatch_options(), "--wrap", "true"]
    try:
        answer = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except FileNotFoundError as error:
        raise HierpipeError(f"cannot ask SLURM about the jobs: {sbatch} not found") from error
    if answer.returncode == 0:
        return None
    return " ".join(answer.stderr.split()) or f"sbatch exited with status {answer.returncode}"


def partition_offer(partition: str | None, sinfo: str = "sinfo") -> str | None:
    """What the nodes of ``partition`` (None: the default one) have, as ``sinfo`` lists it."""
    answer = subprocess.run(
        [sinfo, "--noheader", "--format=%P|%c|%m|%G|%l"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    for line in answer.stdout.splitlines():
        name, cpus, memory, gres, limit = line.split("|")
        default = name.endswith("*")
        if name.rstrip("*") == partition or (partition is None and default):
            return (
                f"partition {name.rstrip('*')} has nodes of {cpus} CPUs, {memory} MB and "
                f"generic resources {gres}, time limit {limit}"
            )
    return None


def check_requests(
    requests: Iterable[SlurmRequest], sbatch: str = "sbatch", sinfo: str = "sinfo"
) -> None:
    """Raise with SLURM's message for the first request (of each distinct one) it refuses."""
    for request in sorted(set(requests)):
        reason = refusal(request, sbatch)
        if reason is not None:
            offer = partition_offer(request.partition, sinfo)
            raise HierpipeError(
                f"SLURM refuses the cluster job of {request.jobs} ({request.describe()}): "
                f"{reason}{f' ({offer})' if offer else ''} -- lower what params' "
                "`resources` ask for, or choose a partition that has it "
                "(default-resources: slurm_partition in your profile)"
            )
