# Training: one job per (dataset, run). The job first writes the run's resolved config
# (params.config) as its own file: Snakemake reruns a job whose params changed, so a change of
# params reruns exactly the runs it touches, and evaluation reads the settings trained with.
rule train:
    input:
        samples="data/{dataset}/samples.parquet",
        classes="data/{dataset}/classes.parquet",
        split=split_file,
        weights=backbone_weights,
    output:
        config=f"{RUN_DIR}/config.yaml",
        model=f"{RUN_DIR}/model.pt",
        log=f"{RUN_DIR}/train_log.parquet",
    log:
        f"{LOGS}/{{dataset}}/{{run}}/train.log",
    benchmark:
        f"{BENCHMARKS}/{{dataset}}/{{run}}/train.tsv"
    # gpu_slots pins the job to one free GPU of the host (none on CPU: the command runs as is)
    group:
        "run"
    threads: TRAINING_THREADS
    resources:
        **TRAINING_RESOURCES,
    params:
        # JSON on the command line: the job (in the image) checks it against the classes
        config=run_config_json,
        # resumable state lives outside the declared outputs, which Snakemake deletes on failure
        checkpoint_dir=f"{RUN_DIR}/checkpoint",
    shell:
        "hierpipe config run --json {params.config:q} --out {output.config} > {log} 2>&1"
        " && python -m hierpipe.runtime.gpu_slots run --"
        " hierpipe train --config {output.config} --model-out {output.model}"
        " --log-out {output.log} --checkpoint-dir {params.checkpoint_dir}"
        " --threads {threads} >> {log} 2>&1"


# Each pretrained backbone's weights, fetched once where Snakemake runs (compute nodes often
# have no internet) from the source the papers' code loaded; training never downloads.
for index, (weights_file, backbone) in enumerate(WEIGHTS_FILES.items()):

    rule:
        name:
            f"fetch_weights_{index}"
        output:
            weights_file,
        log:
            f"logs/weights/{index}.log",
        benchmark:
            f"logs/benchmarks/weights/{index}.tsv"
        localrule: True
        params:
            backbone=backbone,
        shell:
            "hierpipe weights fetch {params.backbone} --out {output} > {log} 2>&1"
