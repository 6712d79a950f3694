# Guide models into and out of the workflow (lwise.guide.export): a configured checkpoint is
# read once into our format; any guide model can be exported as safetensors with a sidecar.


rule import_guide:
    """Read guide.checkpoint once, with the guide section's arch, num_classes, mean, std and
    image_size where the file does not record them, into our format for every later rule."""
    input:
        guide_checkpoint,
    output:
        "results/{dataset}/guide/imported.pt",
    log:
        "results/logs/{dataset}/import_guide.log",
    benchmark:
        "results/benchmarks/{dataset}/import_guide.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        loader=guide_loader,
        # A replaced file reruns this rule and everything after it, whatever its mtime.
        source_sha256=guide_checkpoint_sha256,
    script:
        "../workflow/scripts/import_guide.py"


rule export_guide:
    """The guide model as a plain state dict in safetensors with a JSON sidecar (arch, class
    names, normalisation, input size), for use outside the workflow."""
    input:
        guide_model,
    output:
        weights="results/{dataset}/guide/export/model.safetensors",
        sidecar="results/{dataset}/guide/export/model.json",
    log:
        "results/logs/{dataset}/export_guide.log",
    benchmark:
        "results/benchmarks/{dataset}/export_guide.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        trusted=guide_trusted,
    script:
        "../workflow/scripts/export_checkpoint.py"
