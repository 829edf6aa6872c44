# Helpers shared by the rules: the run grid and each run's resolved config.
import functools
import json

from hierpipe.reporting.plots.plan import FORMATS, figure_plan
from hierpipe.core.config import (
    RUN_ID_PATTERN,
    check_params,
    fetched_weights,
    grid,
    resolve_run_config,
    run_id,
    split_config,
)

# Beyond the schema: dataset, loss and option names must exist, before any job starts.
check_params(config)

# What each job asks of this machine or the cluster (params' resources, the one place for
# them): train and embed as `training`, every other job as `other`; a job runs with the
# threads it asks for.
TRAINING_THREADS = config["resources"]["training"]["threads"]
TRAINING_RESOURCES = {
    "gpu": config["resources"]["training"]["gpus"],
    "mem_mb": config["resources"]["training"]["mem_mb"],
    "runtime": config["resources"]["training"]["runtime"],
}
OTHER_THREADS = config["resources"]["other"]["threads"]
OTHER_RESOURCES = {
    "mem_mb": config["resources"]["other"]["mem_mb"],
    "runtime": config["resources"]["other"]["runtime"],
}

RESULTS = f"results/{config['experiment']}"
RUN_DIR = f"{RESULTS}/{{dataset}}/{{run}}"
LOGS = f"logs/{config['experiment']}"
BENCHMARKS = f"logs/benchmarks/{config['experiment']}"
GRID = grid(config)
RUNS = {run_id(*run[1:]): run[1:] for run in GRID}
FIGURES = figure_plan(config)
WEIGHTS_FILES = fetched_weights(config)


wildcard_constraints:
    dataset=r"[a-z0-9_]+",
    run=RUN_ID_PATTERN,


@functools.cache
def _resolved_run(dataset, run):
    """A run's resolved config, once per run: three of its jobs' inputs and params read it."""
    return resolve_run_config(config, dataset, *RUNS[run])


def run_config_json(wildcards):
    """The resolved config of a run as JSON (Snakemake reruns a job when it changes); keys
    in their order, not sorted: the order of split fractions decides the split."""
    return json.dumps(_resolved_run(wildcards.dataset, wildcards.run).to_dict())


def backbone_weights(wildcards):
    """The pretrained weights file the run loads, when the workflow fetches it."""
    weights = _resolved_run(wildcards.dataset, wildcards.run).backbone.weights
    return [weights] if weights in WEIGHTS_FILES else []


def split_file(wildcards):
    return str(_resolved_run(wildcards.dataset, wildcards.run).split_path)


def prepare_options(wildcards):
    options = config["datasets"][wildcards.dataset].get("prepare", {})
    return " ".join(f"--option {key}={value}" for key, value in options.items())


def prepare_source(wildcards):
    source = config["datasets"][wildcards.dataset].get("source")
    return f"--source '{source}'" if source else ""


def dataset_split(wildcards):
    """The dataset's split settings; the requested file name must be the one they give."""
    split = split_config(config, wildcards.dataset)
    if wildcards.split != split.name:
        raise ValueError(
            f"data/{wildcards.dataset}/splits/{wildcards.split}.parquet is not the split "
            f"params define for {wildcards.dataset} ({split.name})"
        )
    return split


def predefined_option(wildcards):
    predefined = dataset_split(wildcards).predefined
    return f"--predefined {predefined}" if predefined else ""


def all_metrics():
    return run_files("metrics.json")


def run_files(name):
    """One output file (`name`) of every run."""
    return [f"{RESULTS}/{dataset}/{run_id(*run)}/{name}" for dataset, *run in GRID]


def figure_files(group):
    """The PNG (a report item, with its kind's caption) and PDF of each figure of `group`."""
    files = []
    for figure in FIGURES:
        if figure.group != group:
            continue
        labels = {
            "dataset": figure.dataset,
            "figure": figure.kind,
            "model": figure.label,
        }
        caption = f"../report/{figure.kind}.rst"
        stem = f"{RESULTS}/{figure.stem}"
        subcategory = figure.dataset if figure.model is None else figure.label
        png = report(
            f"{stem}.png",
            caption=caption,
            category=figure.category,
            subcategory=subcategory,
            labels=labels,
        )
        files.append(png)
        files.append(f"{stem}.pdf")
    return files
