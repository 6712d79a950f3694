# The report's own figures and tables (lwise.report): per-epsilon stimulus summary, alignment
# summary, difficulty histograms and training curves. Paths: results/<ds>/report/.


from lwise.report import workflow as report_workflow

FINAL_OUTPUTS.append(lambda dataset: report_workflow.outputs(dataset, human_source(dataset)))


rule report_stimuli:
    """Achieved L2, logit gain and the guide's accuracy on every image set, as a table."""
    input:
        unpack(stimulus_dirs),
        model=guide_model,
    output:
        csv="results/{dataset}/report/stimulus_summary.csv",
        html=report(
            "results/{dataset}/report/stimulus_summary.html",
            caption="../report/stimulus_summary.rst",
            category="Stimuli",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/{dataset}/report_stimuli.log",
    benchmark:
        "results/benchmarks/{dataset}/report_stimuli.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=120,
    params:
        sets=stimulus_set_names_of,
        scoring=scoring_settings,
        trusted=guide_trusted,
    script:
        "../workflow/scripts/report_stimuli.py"


rule report_difficulty:
    """Histograms of the difficulty scores, over all images and per class."""
    input:
        "results/{dataset}/difficulty/dirmap.csv",
    output:
        report(
            "results/{dataset}/report/difficulty_histogram.png",
            caption="../report/difficulty_histogram.rst",
            category="Difficulty",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/{dataset}/report_difficulty.log",
    benchmark:
        "results/benchmarks/{dataset}/report_difficulty.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        report={k: config["report"][k] for k in ("histogram_bins", "max_class_panels")},
        scope=lambda wc: scoring_settings(wc)["difficulty_scope"],
    script:
        "../workflow/scripts/report_difficulty.py"


rule report_training:
    """Loss and clean and adversarial accuracy per epoch of the guide model's training."""
    input:
        lambda wc: report_workflow.training_metrics(guide_settings(wc), wc.dataset),
    output:
        report(
            "results/{dataset}/report/training_curves.png",
            caption="../report/training_curves.rst",
            category="Guide model",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/{dataset}/report_training.log",
    benchmark:
        "results/benchmarks/{dataset}/report_training.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    params:
        checkpoint=lambda wc: guide_settings(wc).get("checkpoint"),
    script:
        "../workflow/scripts/report_training.py"


rule report_alignment:
    """The alignment summary (AUC, enhancement effect, consistency, VisAlign) as a table."""
    input:
        "results/{dataset}/alignment_{source}",
    output:
        report(
            "results/{dataset}/report/alignment_summary_{source}.html",
            caption="../report/alignment_summary.rst",
            category="Alignment",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/{dataset}/report_alignment_{source}.log",
    benchmark:
        "results/benchmarks/{dataset}/report_alignment_{source}.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=15,
    script:
        "../workflow/scripts/report_alignment.py"
