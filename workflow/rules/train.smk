# Training: one job per (dataset, run); the run's resolved config is its own file, so a
# change of params reruns exactly the runs it touches.
rule run_config:
    output:
        f"{RUN_DIR}/config.yaml",
    log:
        f"{LOGS}/{{dataset}}/{{run}}/config.log",
    benchmark:
        f"{BENCHMARKS}/{{dataset}}/{{run}}/config.tsv"
    params:
        # JSON on the command line: the job (in the image) checks it against the classes
        config=run_config_json,
    shell:
        "hierpipe config run --json {params.config:q} --out {output} > {log} 2>&1"


rule train:
    input:
        config=f"{RUN_DIR}/config.yaml",
        samples="data/{dataset}/samples.parquet",
        classes="data/{dataset}/classes.parquet",
        split=split_file,
        weights=backbone_weights,
    output:
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
        # resumable state lives outside the declared outputs, which Snakemake deletes on failure
        checkpoint_dir=f"{RUN_DIR}/checkpoint",
    shell:
        "python -m hierpipe.runtime.gpu_slots run --"
        " hierpipe train --config {input.config} --model-out {output.model}"
        " --log-out {output.log} --checkpoint-dir {params.checkpoint_dir}"
        " --threads {threads} > {log} 2>&1"


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
