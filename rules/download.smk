rule download:
    """Fetch, verify and extract a dataset's sources into results/<dataset>/raw."""
    output:
        directory("results/{dataset}/raw"),
    log:
        "results/logs/{dataset}/download.log",
    benchmark:
        "results/benchmarks/{dataset}/download.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=720,
    params:
        sources=dataset_sources,
        # Partial downloads live outside the output folder, which Snakemake empties on a rerun.
        downloads="results/{dataset}/downloads",
        fetch=config["download"],
    script:
        "../workflow/scripts/download.py"
