# Aggregation across runs and seeds.


rule aggregate:
    input:
        all_metrics(),
    output:
        parquet=f"{RESULTS}/summary.parquet",
        csv=f"{RESULTS}/summary.csv",
        markdown=report(f"{RESULTS}/summary.md", category="Summary"),
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{BENCHMARKS}/aggregate.tsv"
    shell:
        "hierpipe aggregate {input} --out-dir {RESULTS} > {log} 2>&1"
