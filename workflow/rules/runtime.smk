# Where the jobs run: the image of params' `container` under --use-singularity, SLURM's
# allocation inside a cluster job, what SLURM would refuse; and the workflow's MLflow run.
import os
import shlex
from pathlib import Path

from snakemake.settings.types import DeploymentMethod

from hierpipe.core.config import check_datasets_obtainable
from hierpipe.core.errors import HierpipeError
from hierpipe.runtime.gpu_slots import SLURM_ALLOCATION, SLURM_JOB_ENV
from hierpipe.runtime.slurm_requests import SlurmRequest, check_requests
from hierpipe.runtime.tracking import (
    WorkflowImage,
    end_workflow_run,
    start_workflow_run,
)


def workflow_image():
    """The image jobs run in under --use-singularity (None without it)."""
    if DeploymentMethod.APPTAINER not in workflow.deployment_settings.deployment_method:
        return None
    args = tuple(shlex.split(workflow.deployment_settings.apptainer_args))
    return WorkflowImage(config["container"], args)


def check_image(image):
    """A local image file that does not exist fails, naming the command that builds it."""
    if image is not None and "://" not in image.path and not Path(image.path).is_file():
        raise HierpipeError(
            f"container {image.path}: no such image file; build it with `apptainer build "
            f"{image.path} docker/hierpipe.def` (or see docker/README.md), or set params' "
            "container"
        )


IMAGE = workflow_image()

# In a SLURM job (the plugin runs Snakemake on the node) the container must see the job's
# allocation, which --cleanenv would drop: hierpipe.runtime.gpu_slots then runs on exactly the GPUs
# SLURM gave the job (and on none when it gave none).
if IMAGE is not None and SLURM_JOB_ENV in os.environ:
    for name in SLURM_ALLOCATION:
        os.environ[f"APPTAINERENV_{name}"] = os.environ.get(name, "")


def slurm_requests():
    """What each job the SLURM executor will submit asks for: a group job's as Snakemake
    computes it (runtime summed over its jobs, the rest the largest of them). Snakemake 9 has
    no public API for the jobs it will submit; this reads its DAG (workflow.dag)."""
    seen_groups = set()
    for job in workflow.dag.needrun_jobs():
        group = workflow.dag.get_job_group(job)
        if job.is_local or group in seen_groups:
            continue
        if group is None:
            submitted, jobs = job, f"rule {job.rule.name}"
        else:
            seen_groups.add(group)
            group.finalize()  # orders its jobs, which its resources need; idempotent
            rules = ", ".join(sorted({member.rule.name for member in group.jobs}))
            submitted, jobs = group, f"group {group.groupid} ({rules})"
        resources = submitted.resources
        yield SlurmRequest(
            jobs=jobs,
            cpus=resources.get("cpus_per_task") or submitted.threads,
            gpus=resources.get("gpu") or 0,
            mem_mb=resources.get("mem_mb"),
            runtime_minutes=resources.get("runtime"),
            partition=resources.get("slurm_partition"),
            account=resources.get("slurm_account"),
            qos=resources.get("qos"),
            constraint=resources.get("constraint"),
        )


# Every rule runs in this image under --use-singularity (all of them call hierpipe).
container: config["container"]


# Before any job of a real run (not for dry runs, --list-rules, --unlock, ...): what jobs
# would need and cannot get (an image, a dataset, what SLURM would refuse to allocate) fails
# here, with one line, instead of at its first job. Then
# MLflow (hierpipe.runtime.tracking): the store, the experiment and one parent run are created once
# (in the image when jobs run in it); jobs find them through the environment.
onstart:
    check_image(IMAGE)
    check_datasets_obtainable(config)
    if workflow.executor_plugin is not None and workflow.executor_plugin.name == "slurm":
        check_requests(slurm_requests())
    start_workflow_run(
        workflow.basedir, config["experiment"], dry_run=workflow.dryrun, image=IMAGE
    )


onsuccess:
    end_workflow_run("FINISHED", image=IMAGE)


onerror:
    end_workflow_run("FAILED", image=IMAGE)
