from pathlib import Path

from lwise.alignment.attention.evaluate import evaluate
from lwise.core.jobs import gpu_job

with gpu_job(snakemake):
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
