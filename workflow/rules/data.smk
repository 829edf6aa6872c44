# Datasets: download (or generate) and prepare, then the deterministic split params define.


rule prepare_dataset:
    output:
        samples="data/{dataset}/samples.parquet",
        classes="data/{dataset}/classes.parquet",
    log:
        "logs/data/{dataset}/prepare.log",
    benchmark:
        "logs/benchmarks/data/{dataset}/prepare.tsv"
    threads: OTHER_THREADS
    resources:
        **OTHER_RESOURCES,
    params:
        options=prepare_options,
        source=prepare_source,
    shell:
        "hierpipe data prepare {wildcards.dataset} --out data/{wildcards.dataset}"
        " {params.source} {params.options} --threads {threads} > {log} 2>&1"


rule split_dataset:
    input:
        samples="data/{dataset}/samples.parquet",
        classes="data/{dataset}/classes.parquet",
    output:
        "data/{dataset}/splits/{split}.parquet",
    log:
        "logs/data/{dataset}/split-{split}.log",
    benchmark:
        "logs/benchmarks/data/{dataset}/split-{split}.tsv"
    threads: OTHER_THREADS
    resources:
        **OTHER_RESOURCES,
    params:
        split=dataset_split,
        predefined=predefined_option,
    shell:
        "hierpipe data split data/{wildcards.dataset} --name {wildcards.split}"
        " --scheme {params.split.scheme} --seed {params.split.seed}"
        " --fractions {params.split.fractions_arg} {params.predefined}"
        " --threads {threads} > {log} 2>&1"
