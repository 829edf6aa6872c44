# Aggregation across runs and seeds.


rule aggregate:
    input:
        all_metrics(),
    output:
        parquet=f"{RESULTS}/summary.parquet",
        csv=f"{RESULTS}/summary.csv",
        markdown=report(f"{RESULTS}/summary.md", category="Summary"),
        # outside results/<experiment>: DVC tracks that folder, and outputs must not nest
        headline=f"metrics/{config['experiment']}.json",
    log:
        f"{LOGS}/aggregate.log",
    benchmark:
        f"{BENCHMARKS}/aggregate.tsv"
    shell:
        "hierpipe aggregate {input} --out-dir {RESULTS} --headline-out {output.headline}"
        " > {log} 2>&1"
