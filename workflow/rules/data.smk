# Datasets: download (or generate) and prepare, then a deterministic split per scheme/seed.


rule prepare_dataset:
    output:
        samples="data/{dataset}/samples.parquet",
        classes="data/{dataset}/classes.parquet",
    params:
        options=prepare_options,
        source=prepare_source,
    log:
        "logs/data/{dataset}/prepare.log",
    benchmark:
        "logs/benchmarks/data/{dataset}/prepare.tsv"
    shell:
        "hierpipe data prepare {wildcards.dataset} --out data/{wildcards.dataset}"
        " {params.source} {params.options} > {log} 2>&1"


rule split_dataset:
    input:
        samples="data/{dataset}/samples.parquet",
        classes="data/{dataset}/classes.parquet",
    output:
        "data/{dataset}/splits/{scheme}-seed{seed}.parquet",
    params:
        fractions=split_fractions,
    log:
        "logs/data/{dataset}/split-{scheme}-seed{seed}.log",
    benchmark:
        "logs/benchmarks/data/{dataset}/split-{scheme}-seed{seed}.tsv"
    shell:
        "hierpipe data split data/{wildcards.dataset} --name {wildcards.scheme}-seed{wildcards.seed}"
        " --scheme {wildcards.scheme} --seed {wildcards.seed} --fractions {params.fractions}"
        " > {log} 2>&1"
