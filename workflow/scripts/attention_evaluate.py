from pathlib import Path

from lwise.alignment.attention.evaluate import evaluate
from lwise.core.jobs import rule_job

with rule_job(snakemake, gpus=True):
    evaluate(
        Path(snakemake.input.images) / "dirmap.csv",
        snakemake.input.phase1,
        snakemake.input.model,
        snakemake.input.roles,
        snakemake.input.masks,
        snakemake.output.metrics,
        snakemake.output.iou,
        snakemake.output.overlays,
        updates=snakemake.input.updates,
        removals=snakemake.input.removals,
        settings=snakemake.params.settings,
        synthetic=snakemake.params.synthetic,
        threads=snakemake.threads,
    )
