# hierpipe: download/split -> train every model/option/seed -> export embeddings ->
# evaluate -> tables and figures. Params: params/default.yaml, or --configfile params/<other>.yaml.
from snakemake.utils import min_version

from hierpipe.config import validate_params

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


# MLflow (hierpipe.tracking): the store, the experiment and one parent run are created here,
# once, before any job; jobs find them through the environment and log child runs.
onstart:
    from hierpipe.tracking import start_workflow_run

    start_workflow_run(workflow.basedir, config["experiment"], dry_run=workflow.dryrun)


onsuccess:
    from hierpipe.tracking import end_workflow_run

    end_workflow_run("FINISHED")


onerror:
    from hierpipe.tracking import end_workflow_run

    end_workflow_run("FAILED")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


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
