from lwise.data.pixels import PREPROCESSING


rule preprocess_stimuli:
    """Every image decoded once, at the guide model's input size, into one uint8 array that the
    natural and every enhanced set read memory-mapped (a new epsilon decodes nothing)."""
    input:
        images="results/{dataset}/imagefolder",
        model=guide_model,
    output:
        pixels="results/{dataset}/stimuli/preprocessed.npy",
        index="results/{dataset}/stimuli/preprocessed.csv",
    log:
        "results/logs/{dataset}/preprocess_stimuli.log",
    benchmark:
        "results/benchmarks/{dataset}/preprocess_stimuli.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: gpu_job_threads
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        preprocessing=PREPROCESSING,
        trusted=guide_trusted,
    script:
        "../workflow/scripts/preprocess_stimuli.py"


rule natural_stimuli:
    """The unperturbed stimuli, preprocessed and encoded exactly like the enhanced ones."""
    input:
        images="results/{dataset}/imagefolder",
        dirmap="results/{dataset}/difficulty/dirmap.csv",
        model=guide_model,
        pixels="results/{dataset}/stimuli/preprocessed.npy",
        index="results/{dataset}/stimuli/preprocessed.csv",
    output:
        directory("results/{dataset}/stimuli/natural"),
    log:
        "results/logs/{dataset}/natural_stimuli.log",
    benchmark:
        "results/benchmarks/{dataset}/natural_stimuli.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: gpu_job_threads
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        enhance=natural_settings,
        trusted=guide_trusted,
    script:
        "../workflow/scripts/natural_stimuli.py"


rule enhance:
    """PGD toward the ground-truth class at one epsilon with one objective; pixels read from
    the preprocessed array ahead of the GPU, PNGs encoded behind it in worker processes."""
    input:
        images="results/{dataset}/imagefolder",
        dirmap="results/{dataset}/difficulty/dirmap.csv",
        model=guide_model,
        pixels="results/{dataset}/stimuli/preprocessed.npy",
        index="results/{dataset}/stimuli/preprocessed.csv",
    output:
        directory("results/{dataset}/stimuli/{objective}_eps{eps}"),
    log:
        "results/logs/{dataset}/enhance_{objective}_eps{eps}.log",
    benchmark:
        "results/benchmarks/{dataset}/enhance_{objective}_eps{eps}.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: gpu_job_threads
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=720,
    params:
        enhance=enhance_job_settings,
        eps=eps_value,
        trusted=guide_trusted,
    script:
        "../workflow/scripts/enhance.py"


rule contact_sheet:
    """Natural vs every enhanced version, per class across the difficulty range, capped."""
    input:
        contact_sheet_inputs,
    output:
        report(
            "results/{dataset}/stimuli/contact_sheet.png",
            caption="../report/contact_sheet.rst",
            category="Stimuli",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/{dataset}/contact_sheet.log",
    benchmark:
        "results/benchmarks/{dataset}/contact_sheet.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        per_class=contact_sheet_per_class,
        sheet=config["report"]["contact_sheet"],
        logit_column=lambda wildcards: scoring_settings(wildcards)["gt_logit_column"],
    script:
        "../workflow/scripts/contact_sheet.py"
