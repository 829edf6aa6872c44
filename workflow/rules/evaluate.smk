# Embedding export and evaluation of each run.


rule embed:
    input:
        model=f"{RUN_DIR}/model.pt",
        split=split_file,
    output:
        embeddings=f"{RUN_DIR}/embeddings.parquet",
        representatives=f"{RUN_DIR}/representatives.parquet",
    log:
        f"{LOGS}/{{dataset}}/{{run}}/embed.log",
    benchmark:
        f"{BENCHMARKS}/{{dataset}}/{{run}}/embed.tsv"
    # gpu_slots pins the job to one free GPU of the host (none on CPU: the command runs as is)
    group:
        "run"
    threads: TRAINING_THREADS
    resources:
        **TRAINING_RESOURCES,
    shell:
        "python -m hierpipe.runtime.gpu_slots run --"
        " hierpipe embed --model {input.model} --embeddings-out {output.embeddings}"
        " --representatives-out {output.representatives} --threads {threads} > {log} 2>&1"


rule evaluate:
    input:
        config=f"{RUN_DIR}/config.yaml",
        embeddings=f"{RUN_DIR}/embeddings.parquet",
        representatives=f"{RUN_DIR}/representatives.parquet",
        classes="data/{dataset}/classes.parquet",
    output:
        f"{RUN_DIR}/metrics.json",
    log:
        f"{LOGS}/{{dataset}}/{{run}}/evaluate.log",
    benchmark:
        f"{BENCHMARKS}/{{dataset}}/{{run}}/evaluate.tsv"
    group:
        "run"
    threads: OTHER_THREADS
    resources:
        **OTHER_RESOURCES,
    shell:
        "hierpipe evaluate --config {input.config} --embeddings {input.embeddings}"
        " --representatives {input.representatives} --out {output} --threads {threads}"
        " > {log} 2>&1"
