# hierpipe: download/split -> train every model/option/seed -> export embeddings ->
# evaluate -> tables and figures. Params: params/default.yaml, or --configfile params/<other>.yaml.
#
# Parsing needs Snakemake and nothing else: the code imported here (hierpipe.core.config, .catalog,
# .questions, .tracking, .plots.plan) imports no torch, timm, MLflow or UMAP, and Snakemake
# puts this directory on sys.path. With --use-singularity every rule runs hierpipe in the
# image of params' `container`; without it, on this machine (then hierpipe must be installed).
import os
import shlex
from pathlib import Path

from snakemake.settings.types import DeploymentMethod
from snakemake.utils import min_version

from hierpipe.core.config import check_datasets_obtainable, validate_params
from hierpipe.core.errors import HierpipeError
from hierpipe.runtime.gpu_slots import SLURM_ALLOCATION, SLURM_JOB_ENV
from hierpipe.runtime.slurm_requests import SlurmRequest, check_requests
from hierpipe.runtime.tracking import WorkflowImage, end_workflow_run, start_workflow_run

min_version("9.0")


# A --configfile on the command line replaces the default instead of being merged into it,
# so an experiment never inherits another one's datasets or models.
if not workflow.config_settings.configfiles:

    configfile: "params/default.yaml"


# hierpipe's validator: Snakemake's prints the whole sub-schema; this names the key in one line
validate_params(
    config,
    f"{workflow.basedir}/workflow/schemas/params.schema.yaml",
    ", ".join(map(str, workflow.config_settings.configfiles)) or "params/default.yaml",
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
    computes it (runtime summed over its jobs, the rest the largest of them)."""
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
    start_workflow_run(workflow.basedir, config["experiment"], dry_run=workflow.dryrun, image=IMAGE)


onsuccess:
    end_workflow_run("FINISHED", image=IMAGE)


onerror:
    end_workflow_run("FAILED", image=IMAGE)


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# On a cluster every job pays a scheduler's and a Snakemake's start-up (seconds to minutes in
# the queue): writing a config file or a table runs where Snakemake runs, and so does
# obtaining the datasets, because compute nodes often have no internet (the login node then
# downloads, extracts and decodes each image once to verify it). Each run's train, embed and
# evaluate go out as one cluster job (`group: "run"` in the rules). Locally, groups change
# nothing.
localrules:
    run_config,
    experiment_params,
    prepare_dataset,
    split_dataset,
    aggregate,


# Per-run metrics are targets too, so a deleted metrics.json is recomputed on the next run
# (Snakemake does not regenerate a missing intermediate file whose consumers are up to date).
rule all:
    input:
        all_metrics(),
        f"{RESULTS}/summary.md",
        # DVC deletes its metrics file before rerunning a stage; listing it gets it rewritten
        f"metrics/{config['experiment']}.json",
        [f"{RESULTS}/{figure.stem}.{extension}" for figure in FIGURES for extension in FORMATS],
    default_target: True
