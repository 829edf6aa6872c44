# Tables and figures of the experiment; `snakemake --report results/<experiment>/report.zip`
# gathers them with their captions (workflow/report/*.rst) and the resolved params.
import json
import os

from hierpipe.reporting.plots.plan import GROUPS


rule experiment_params:
    output:
        report(f"{RESULTS}/params.yaml", caption="../report/params.rst", category="Params"),
    log:
        f"{LOGS}/params.log",
    benchmark:
        f"{BENCHMARKS}/params.tsv"
    params:
        config=json.dumps(config),
    shell:
        "hierpipe config experiment --json {params.config:q} --out {output} > {log} 2>&1"


rule aggregate:
    input:
        metrics=all_metrics(),
        params=f"{RESULTS}/params.yaml",
    output:
        parquet=f"{RESULTS}/summary.parquet",
        csv=f"{RESULTS}/summary.csv",
        markdown=report(f"{RESULTS}/summary.md", caption="../report/summary.rst", category="Tables"),
        comparisons=report(
            f"{RESULTS}/comparisons.md",
            caption="../report/comparisons.rst",
            category="Tables",
        ),
        comparisons_table=multiext(f"{RESULTS}/comparisons", ".parquet", ".csv"),
        retrieval=report(
            f"{RESULTS}/retrieval_table.md",
            caption="../report/retrieval_table.rst",
            category="Tables",
        ),
        retrieval_table=multiext(f"{RESULTS}/retrieval_table", ".parquet", ".csv"),
        # outside results/<experiment>: DVC tracks that folder, and outputs must not nest
        headline=f"metrics/{config['experiment']}.json",
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{BENCHMARKS}/aggregate.tsv"
    threads: OTHER_THREADS
    resources:
        **OTHER_RESOURCES,
    params:
        # the experiment's results folder, where params.yaml lies
        results_dir=lambda wildcards, input: os.path.dirname(input.params),
    shell:
        "hierpipe aggregate {input.metrics} --params {input.params} --out-dir {params.results_dir}"
        " --headline-out {output.headline} --threads {threads} > {log} 2>&1"


for group in GROUPS:

    rule:
        name:
            f"figures_{group}"
        input:
            params=f"{RESULTS}/params.yaml",
            summary=f"{RESULTS}/summary.parquet",
            metrics=all_metrics(),
            configs=run_files("config.yaml"),
            embeddings=run_files("embeddings.parquet"),
            representatives=run_files("representatives.parquet"),
            training_logs=run_files("train_log.parquet"),
        output:
            figure_files(group),
        log:
            f"{LOGS}/figures/{group}.log",
        benchmark:
            f"{BENCHMARKS}/figures/{group}.tsv"
        threads: OTHER_THREADS
        resources:
            **OTHER_RESOURCES,
        params:
            group=group,
            results_dir=lambda wildcards, input: os.path.dirname(input.params),
        shell:
            "hierpipe figures --params {input.params} --results-dir {params.results_dir}"
            " --group {params.group} --threads {threads} > {log} 2>&1"
