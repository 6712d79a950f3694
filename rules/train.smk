rule train_guide:
    """Adversarially train (or fine-tune) the guide model on the dataset's ImageFolder. A rerun
    resumes from the resume state only when it belongs to the same run (settings, data and
    initial checkpoint); otherwise it starts over and the log says why."""
    input:
        folder="results/{dataset}/imagefolder",
        # A fine-tuning start: missing is an error, replaced means retraining.
        init=lambda w: guide_settings(w)["train"].get("init_checkpoint") or [],
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
        train=lambda w: guide_settings(w)["train"],
        # Resume state lives beside the outputs, which Snakemake deletes when a job fails.
        state_dir="results/{dataset}/guide/resume",
    script:
        "../workflow/scripts/train_guide.py"
