# Correspondence-based classifiers (kNN, EMD-Corr, CHM-Corr; Nguyen, Taesiri & Nguyen, NeurIPS
# 2022) and human-AI team trials. Paths: results/<ds>/correspondence/.


from lwise.alignment.correspondence import workflow as correspondence

FINAL_OUTPUTS.append(lambda dataset: correspondence.outputs(config, DATASETS, dataset))


rule correspondence_features:
    """Pooled and patch features of the training split under the guide model (the cache)."""
    input:
        images="results/{dataset}/imagefolder",
        model=guide_model,
    output:
        "results/{dataset}/correspondence/features.pt",
    log:
        "results/logs/{dataset}/correspondence_features.log",
    benchmark:
        "results/benchmarks/{dataset}/correspondence_features.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        settings=config["correspondence"]["classify"],
        trusted=guide_trusted,
    script:
        "../workflow/scripts/correspondence_features.py"


rule correspondence_classify:
    """Accuracy of the guide's softmax, kNN, EMD-Corr and CHM-Corr; per-image votes; figures."""
    input:
        images="results/{dataset}/imagefolder",
        model=guide_model,
        features="results/{dataset}/correspondence/features.pt",
    output:
        accuracy=report(
            "results/{dataset}/correspondence/accuracy.csv",
            caption="../report/correspondence.rst",
            category="Correspondence",
            subcategory="{dataset}",
        ),
        predictions="results/{dataset}/correspondence/predictions.csv",
        explanations=report(
            "results/{dataset}/correspondence/explanations.png",
            caption="../report/correspondence_explanations.rst",
            category="Correspondence",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/{dataset}/correspondence_classify.log",
    benchmark:
        "results/benchmarks/{dataset}/correspondence_classify.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=480,
    params:
        settings=config["correspondence"]["classify"],
        trusted=guide_trusted,
    script:
        "../workflow/scripts/correspondence_classify.py"


rule simulate_team_trials:
    """Synthetic human-AI team trials from the classifiers' predictions (marked synthetic)."""
    input:
        "results/{dataset}/correspondence/predictions.csv",
    output:
        "results/{dataset}/correspondence/team_trials_synthetic.csv",
    log:
        "results/logs/{dataset}/simulate_team_trials.log",
    benchmark:
        "results/benchmarks/{dataset}/simulate_team_trials.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        teams=correspondence.team_settings(config),
    script:
        "../workflow/scripts/simulate_team_trials.py"


rule team_trials:
    """Human-AI team metrics per explanation method, with intervals."""
    input:
        trials=lambda wc: correspondence.trials_file(config, wc.dataset),
    output:
        table=report(
            "results/{dataset}/correspondence/teams_{source}.csv",
            caption="../report/correspondence_teams.rst",
            category="Correspondence",
            subcategory="{dataset}",
        ),
        plot=report(
            "results/{dataset}/correspondence/teams_{source}.png",
            caption="../report/correspondence_teams.rst",
            category="Correspondence",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/{dataset}/team_trials_{source}.log",
    benchmark:
        "results/benchmarks/{dataset}/team_trials_{source}.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        teams=correspondence.team_settings(config),
        layout=lambda wc: correspondence.trials_layout(config, wc.dataset),
    script:
        "../workflow/scripts/team_trials.py"
