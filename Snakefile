# hierpipe: download/split -> train every model/option/seed -> export embeddings ->
# evaluate -> tables and figures. Params: params/default.yaml, or --configfile params/<other>.yaml.
#
# Parsing needs Snakemake and nothing else: the code the rules import (hierpipe.core,
# hierpipe.runtime, hierpipe.reporting.plots.plan) imports no torch, timm, MLflow or UMAP
# (pyproject.toml's import contract), and Snakemake puts this directory on sys.path. With --use-singularity every rule runs hierpipe in the
# image of params' `container`; without it, on this machine (then hierpipe must be installed).
from snakemake.utils import min_version

from hierpipe.core.config import validate_params

min_version("9.0")


# A --configfile on the command line replaces the default instead of being merged into it,
# so an experiment never inherits another one's datasets or models.
if not workflow.overwrite_configfiles:

    configfile: "params/default.yaml"


# hierpipe's validator: Snakemake's prints the whole sub-schema; this names the key in one line
validate_params(
    config,
    f"{workflow.basedir}/workflow/schemas/params.schema.yaml",
    ", ".join(map(str, workflow.overwrite_configfiles)) or "params/default.yaml",
)


include: "workflow/rules/common.smk"
include: "workflow/rules/runtime.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# On a cluster every job pays a scheduler's and a Snakemake's start-up (seconds to minutes in
# the queue): writing the resolved params or a table runs where Snakemake runs, and so does
# obtaining the datasets, because compute nodes often have no internet (the login node then
# downloads, extracts and decodes each image once to verify it). Each run's train, embed and
# evaluate go out as one cluster job (`group: "run"` in the rules). Locally, groups change
# nothing.
localrules:
    experiment_params,
    prepare_dataset,
    split_dataset,
    aggregate,


# Per-run metrics are targets too, so a deleted metrics.json is recomputed on the next run
# (Snakemake does not regenerate a missing intermediate file whose consumers are up to date).
rule all:
    default_target: True
    input:
        all_metrics(),
        f"{RESULTS}/summary.md",
        # DVC deletes its metrics file before rerunning a stage; listing it gets it rewritten
        f"metrics/{config['experiment']}.json",
        [f"{RESULTS}/{figure.stem}.{extension}" for figure in FIGURES for extension in FORMATS],
