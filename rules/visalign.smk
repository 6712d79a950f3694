# VisAlign (Lee et al., NeurIPS 2023): models x abstention methods x seeds on a test set of
# Must-Act, Must-Abstain and Uncertain images. Paths: results/<ds>/visalign/.


import re

from lwise.alignment.visalign import workflow as visalign
from lwise.alignment.visalign.settings import check_training

FINAL_OUTPUTS.append(lambda dataset: visalign.outputs(config, DATASETS, dataset))
# Training settings of the baselines (visalign.train, models.<m>.train) checked when parsed.
check_training(config["visalign"])


wildcard_constraints:
    model="|".join(re.escape(m) for m in visalign.models(config)) or "(?!)",
    seed=r"\d+",


rule visalign_testset:
    """The open test set of a VisAlign-layout dataset, or a synthetic one (marked synthetic)."""
    input:
        lambda wc: visalign.testset_input(config, wc.dataset),
    output:
        directory("results/{dataset}/visalign/testset"),
    log:
        "results/logs/{dataset}/visalign_testset.log",
    benchmark:
        "results/benchmarks/{dataset}/visalign_testset.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        kind=lambda wc: visalign.testset_kind(config, wc.dataset),
        options=lambda wc: visalign.definer_options(config, wc.dataset),
        synthetic=config["visalign"]["synthetic"],
    script:
        "../workflow/scripts/visalign_testset.py"


rule visalign_train:
    """One baseline (architecture, seed) trained from scratch on the dataset's ImageFolder."""
    input:
        "results/{dataset}/imagefolder",
    output:
        model="results/{dataset}/visalign/models/{model}/seed{seed}/model.pt",
        metrics="results/{dataset}/visalign/models/{model}/seed{seed}/metrics.csv",
    log:
        "results/logs/{dataset}/visalign_train_{model}_seed{seed}.log",
    benchmark:
        "results/benchmarks/{dataset}/visalign_train_{model}_seed{seed}.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=2880,
    params:
        train=lambda wc: visalign.train_settings(
            config, wc.model, wc.seed, guide_settings(wc)["train"]
        ),
        # Resume state lives beside the outputs, which Snakemake deletes when a job fails.
        state_dir="results/{dataset}/visalign/models/{model}/seed{seed}/resume",
    script:
        "../workflow/scripts/visalign_train.py"


rule visalign_score:
    """Every configured abstention method on one model (one seed) over the test set."""
    input:
        model=lambda wc: visalign.model_file(config, wc.dataset, wc.model, wc.seed, guide_model(wc)),
        images="results/{dataset}/imagefolder",
        testset="results/{dataset}/visalign/testset",
    output:
        "results/{dataset}/visalign/scores/{model}_seed{seed}.csv",
    log:
        "results/logs/{dataset}/visalign_score_{model}_seed{seed}.log",
    benchmark:
        "results/benchmarks/{dataset}/visalign_score_{model}_seed{seed}.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=240,
    params:
        visalign=visalign.scoring_settings(config),
        trusted=lambda wc: visalign.model_trusted(config, wc.model, guide_trusted(wc)),
    script:
        "../workflow/scripts/visalign_score.py"


rule visalign_evaluate:
    """Hellinger distance and reliability per model, method, seed and category; figures and
    leaderboard files."""
    input:
        testset="results/{dataset}/visalign/testset",
        scores=lambda wc: visalign.score_list(config, wc.dataset, guide_settings(wc)["train"]),
    output:
        report(
            directory("results/{dataset}/visalign/alignment_{source}"),
            patterns=["{name}.png", "{name}.csv"],
            caption="../report/visalign.rst",
            category="VisAlign",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/{dataset}/visalign_evaluate_{source}.log",
    benchmark:
        "results/benchmarks/{dataset}/visalign_evaluate_{source}.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=60,
    params:
        visalign=visalign.report_settings(config),
        scores=lambda wc: visalign.score_files(config, wc.dataset, guide_settings(wc)["train"]),
    script:
        "../workflow/scripts/visalign_evaluate.py"
