rule simulate_observers:
    """Synthetic human trials for datasets without real responses (marked synthetic)."""
    input:
        unpack(stimulus_dirs),
    output:
        "results/{dataset}/humans/trials_synthetic.csv",
    log:
        "results/logs/{dataset}/simulate_observers.log",
    benchmark:
        "results/benchmarks/{dataset}/simulate_observers.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        simulation=config["simulation"],
    script:
        "../workflow/scripts/simulate_observers.py"


rule evaluate_alignment:
    """Difficulty prediction, enhancement effect, model-human consistency and VisAlign."""
    input:
        unpack(stimulus_dirs),
        trials=trials_file,
        probabilities="results/{dataset}/difficulty/probabilities.csv",
        images="results/{dataset}/imagefolder",
    output:
        report(
            directory("results/{dataset}/alignment_{source}"),
            patterns=["{name}.png", "{name}.csv"],
            caption="../report/alignment.rst",
            category="Alignment",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/{dataset}/evaluate_alignment_{source}.log",
    benchmark:
        "results/benchmarks/{dataset}/evaluate_alignment_{source}.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        evaluation=config["evaluation"],
        # The column the score_difficulty rule wrote the guide model's logit to.
        logit_column=lambda wildcards: scoring_settings(wildcards)["gt_logit_column"],
        sets=stimulus_set_names_of,
        extras=human_extras,
    script:
        "../workflow/scripts/evaluate_alignment.py"
