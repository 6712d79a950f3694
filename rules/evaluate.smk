from lwise.alignment.analysis import EvaluationConfig
from lwise.alignment.visalign import workflow as visalign

# Checked when the workflow is parsed: an abstention method that cannot run here (the Deep
# Ensemble needs several models) stops the run before any job, naming evaluation.abstention.
EVALUATION = EvaluationConfig.from_config(config["evaluation"])
# Every method but msp runs the guide model: a GPU job that gets the model and the visalign
# section's settings of that method; msp needs only probabilities.csv (a cheap CPU job).
EVALUATION_GPUS = 1 if EVALUATION.needs_model else 0


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
    """Difficulty prediction, enhancement effect, model-human consistency and VisAlign (with the
    guide model itself for an abstention method other than msp)."""
    input:
        unpack(stimulus_dirs),
        unpack(lambda wc: {"model": guide_model(wc)} if EVALUATION.needs_model else {}),
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
    threads: 1 + EVALUATION_GPUS
    resources:
        gpu=EVALUATION_GPUS,
        mem_mb=4000 + 4000 * EVALUATION_GPUS,
        runtime=60 + 180 * EVALUATION_GPUS,
    params:
        evaluation=config["evaluation"],
        abstention=(
            visalign.evaluation_settings(config, EVALUATION.abstention)
            if EVALUATION.needs_model
            else {}
        ),
        trusted=lambda wc: guide_trusted(wc) if EVALUATION.needs_model else False,
        # The column the score_difficulty rule wrote the guide model's logit to.
        logit_column=lambda wildcards: scoring_settings(wildcards)["gt_logit_column"],
        sets=stimulus_set_names_of,
        extras=human_extras,
    script:
        "../workflow/scripts/evaluate_alignment.py"
