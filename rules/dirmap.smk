rule dirmap:
    """Index the raw images: one CSV row per image (split, class, class_num, im_path, ...)."""
    input:
        "results/{dataset}/raw",
    output:
        "results/{dataset}/dirmap.csv",
    log:
        "results/logs/{dataset}/dirmap.log",
    benchmark:
        "results/benchmarks/{dataset}/dirmap.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        definer=dataset_definer,
    script:
        "../workflow/scripts/dirmap.py"
