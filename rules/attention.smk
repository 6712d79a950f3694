# Attention alignment (GRADIA, Gao et al. CSCW 2022): Grad-CAM of the guide model against human
# masks, and reasonability-weighted attention fine-tuning. Outputs under
# results/<ds>/attention_<human|synthetic>/; "synthetic" when the workflow made the masks.


from lwise.alignment.attention import workflow as attention

FINAL_OUTPUTS.append(lambda dataset: attention.outputs(config, dataset))


rule attention_synthetic_masks:
    """SYNTHETIC attention masks (pixels standing out from the background) for val and test."""
    input:
        "results/{dataset}/imagefolder",
    output:
        directory("results/{dataset}/attention_synthetic/masks"),
    log:
        "results/logs/{dataset}/attention_synthetic_masks.log",
    benchmark:
        "results/benchmarks/{dataset}/attention_synthetic_masks.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        contrast=lambda wc: attention.settings(config, wc.dataset)["synthetic_contrast"],
    script:
        "../workflow/scripts/attention_synthetic_masks.py"


rule attention_finetune:
    """GRADIA's two phases: cross-entropy, then attention fine-tuning against the masks."""
    input:
        unpack(lambda wc: attention.human_inputs(config, wc.dataset, wc.source)),
        images="results/{dataset}/imagefolder",
        model=guide_model,
    output:
        phase1="results/{dataset}/attention_{source}/phase1.pt",
        model="results/{dataset}/attention_{source}/model.pt",
        history="results/{dataset}/attention_{source}/history.csv",
        roles="results/{dataset}/attention_{source}/roles.csv",
    log:
        "results/logs/{dataset}/attention_finetune_{source}.log",
    benchmark:
        "results/benchmarks/{dataset}/attention_finetune_{source}.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=1440,
    params:
        settings=lambda wc: attention.training_settings(config, wc.dataset),
        trusted=guide_trusted,
    script:
        "../workflow/scripts/attention_finetune.py"


rule attention_evaluate:
    """Accuracy and Grad-CAM IoU before and after attention fine-tuning; per image; overlays."""
    input:
        unpack(lambda wc: attention.human_inputs(config, wc.dataset, wc.source)),
        images="results/{dataset}/imagefolder",
        phase1="results/{dataset}/attention_{source}/phase1.pt",
        model="results/{dataset}/attention_{source}/model.pt",
        roles="results/{dataset}/attention_{source}/roles.csv",
    output:
        metrics=report(
            "results/{dataset}/attention_{source}/metrics.csv",
            caption="../report/attention_metrics.rst",
            category="Attention",
            subcategory="{dataset}",
        ),
        iou="results/{dataset}/attention_{source}/iou.csv",
        overlays=report(
            "results/{dataset}/attention_{source}/overlays.png",
            caption="../report/attention.rst",
            category="Attention",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/{dataset}/attention_evaluate_{source}.log",
    benchmark:
        "results/benchmarks/{dataset}/attention_evaluate_{source}.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        settings=lambda wc: attention.training_settings(config, wc.dataset),
        synthetic=lambda wc: wc.source == "synthetic",
    script:
        "../workflow/scripts/attention_evaluate.py"


rule attention_reasonability:
    """GRADIA's reasonability matrix of the fine-tuned model on test, from a human assessment."""
    input:
        iou="results/{dataset}/attention_{source}/iou.csv",
        assessment=lambda wc: attention.assessment(config, wc.dataset),
    output:
        "results/{dataset}/attention_{source}/reasonability_test.csv",
    log:
        "results/logs/{dataset}/attention_reasonability_{source}.log",
    benchmark:
        "results/benchmarks/{dataset}/attention_reasonability_{source}.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        source="{source}",
    script:
        "../workflow/scripts/attention_reasonability.py"
