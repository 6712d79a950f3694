# L-WISE learning experiments: a study (trial lists + the static web page) per dataset from its
# difficulty scores and uploaded image sets, its upload next to the image sets, and the
# learning analysis of its responses: real ones when `experiments.responses.<dataset>` names
# them, else synthetic learners (marked so).
#   results/<ds>/experiments/study/                 trial lists, web/ (open web/index.html)
#   results/<ds>/upload/study/manifest.{csv,json}   where each file of the study is on S3
#   results/<ds>/experiments/responses_synthetic.csv
#   results/<ds>/experiments/analysis_<human|synthetic>/


from lwise.experiments import workflow as experiments

FINAL_OUTPUTS.append(lambda dataset: experiments.outputs(config, dataset))


rule experiment_study:
    """Per-participant trial lists (CSV + JSON) and the static web experiment for one dataset."""
    input:
        unpack(
            lambda wc: {
                name: f"results/{wc.dataset}/upload/{name}/dirmap.csv"
                for name in stimulus_set_names(wc.dataset)
            }
        ),
        difficulty="results/{dataset}/difficulty/dirmap.csv",
    output:
        directory("results/{dataset}/experiments/study"),
    log:
        "results/logs/{dataset}/experiment_study.log",
    benchmark:
        "results/benchmarks/{dataset}/experiment_study.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        settings=experiments.study_settings(config),
        sets=lambda wc: stimulus_set_names(wc.dataset),
        imagefolder="results/{dataset}/imagefolder",
        stimuli="results/{dataset}/stimuli",
    script:
        "../workflow/scripts/experiment_study.py"


rule publish_study:
    """Upload every file the study wrote (page, scripts, trial lists) to S3; write a manifest."""
    input:
        "results/{dataset}/experiments/study",
    output:
        csv=f"results/{{dataset}}/upload/{experiments.STUDY_SET}/manifest.csv",
        json=f"results/{{dataset}}/upload/{experiments.STUDY_SET}/manifest.json",
    log:
        "results/logs/{dataset}/publish_study.log",
    benchmark:
        "results/benchmarks/{dataset}/publish_study.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 2
    resources:
        s3_uploads=1,
        mem_mb=2000,
        runtime=60,
    params:
        upload=config["upload"],
        endpoint=upload_endpoint(),
        name=experiments.STUDY_SET,
    script:
        "../workflow/scripts/publish_study.py"


rule simulate_learners:
    """Synthetic learners' responses to the study's trial lists (marked synthetic)."""
    input:
        "results/{dataset}/experiments/study",
    output:
        "results/{dataset}/experiments/responses_synthetic.csv",
    log:
        "results/logs/{dataset}/simulate_learners.log",
    benchmark:
        "results/benchmarks/{dataset}/simulate_learners.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        simulation=config["experiments"]["simulation"],
    script:
        "../workflow/scripts/simulate_learners.py"


rule analyse_experiment:
    """Test accuracy per condition, gain over Control, learning curves and time to finish."""
    input:
        responses=lambda wc: experiments.responses(config, wc.dataset, wc.source),
    output:
        report(
            directory("results/{dataset}/experiments/analysis_{source}"),
            patterns=["{name}.png", "{name}.csv"],
            caption="../report/experiments.rst",
            category="Learning experiments",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/{dataset}/analyse_experiment_{source}.log",
    benchmark:
        "results/benchmarks/{dataset}/analyse_experiment_{source}.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        analysis=config["experiments"]["analysis"],
    script:
        "../workflow/scripts/analyse_experiment.py"
