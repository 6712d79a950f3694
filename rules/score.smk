rule score_difficulty:
    """Ground-truth logit, prediction, entropy and difficulty per image; accuracy; confusion."""
    input:
        images="results/{dataset}/imagefolder",
        model=guide_model,
    output:
        dirmap="results/{dataset}/difficulty/dirmap.csv",
        accuracy="results/{dataset}/difficulty/accuracy.csv",
        confusion=report(
            "results/{dataset}/difficulty/confusion_matrix.png",
            caption="../report/difficulty.rst",
            category="Difficulty",
            subcategory="{dataset}",
        ),
        probabilities="results/{dataset}/difficulty/probabilities.csv",
    log:
        "results/logs/{dataset}/score_difficulty.log",
    benchmark:
        "results/benchmarks/{dataset}/score_difficulty.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        scoring=scoring_settings,
        trusted=guide_trusted,
    script:
        "../workflow/scripts/score_difficulty.py"
