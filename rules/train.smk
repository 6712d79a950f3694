rule train_guide:
    """Adversarially train (or fine-tune) the guide model on the dataset's ImageFolder."""
    input:
        "results/{dataset}/imagefolder",
    output:
        model="results/{dataset}/guide/model.pt",
        metrics="results/{dataset}/guide/metrics.csv",
    log:
        "results/logs/{dataset}/train_guide.log",
    benchmark:
        "results/benchmarks/{dataset}/train_guide.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 4
    resources:
        gpu=guide_gpus,
        mem_mb=16000,
        runtime=2880,
    params:
        guide=guide_settings,
        # Resume state lives beside the outputs, which Snakemake deletes when a job fails.
        state_dir="results/{dataset}/guide/resume",
    script:
        "../workflow/scripts/train_guide.py"
