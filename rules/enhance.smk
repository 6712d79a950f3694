rule natural_stimuli:
    """The unperturbed stimuli, preprocessed and encoded exactly like the enhanced ones."""
    input:
        images="results/{dataset}/imagefolder",
        dirmap="results/{dataset}/difficulty/dirmap.csv",
        model=guide_model,
    output:
        directory("results/{dataset}/stimuli/natural"),
    log:
        "results/logs/{dataset}/natural_stimuli.log",
    benchmark:
        "results/benchmarks/{dataset}/natural_stimuli.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 4
    resources:
        mem_mb=4000,
        runtime=120,
    params:
        enhance=natural_settings,
        trusted=guide_trusted,
    script:
        "../workflow/scripts/natural_stimuli.py"


rule enhance:
    """PGD toward the ground-truth class at one epsilon with one objective."""
    input:
        images="results/{dataset}/imagefolder",
        dirmap="results/{dataset}/difficulty/dirmap.csv",
        model=guide_model,
    output:
        directory("results/{dataset}/stimuli/{objective}_eps{eps}"),
    log:
        "results/logs/{dataset}/enhance_{objective}_eps{eps}.log",
    benchmark:
        "results/benchmarks/{dataset}/enhance_{objective}_eps{eps}.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 4
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
    """Natural vs every enhanced version, a few images per class."""
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
    script:
        "../workflow/scripts/contact_sheet.py"
