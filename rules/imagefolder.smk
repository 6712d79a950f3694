rule imagefolder:
    """Build <split>/<class>/<file> plus dirmap.csv and skipped.csv from the dataset's dirmap."""
    input:
        dirmap="results/{dataset}/dirmap.csv",
        raw="results/{dataset}/raw",
    output:
        directory("results/{dataset}/imagefolder"),
    log:
        "results/logs/{dataset}/imagefolder.log",
    benchmark:
        "results/benchmarks/{dataset}/imagefolder.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=240,
    params:
        build=dataset_build,
        image_roots=dataset_image_roots,
    script:
        "../workflow/scripts/imagefolder.py"
