from pathlib import Path

from lwise.alignment.attention.evaluate import evaluate
from lwise.core.gpuslots import acquire_gpus, gpus_requested
from lwise.core.logs import script_logging

with script_logging(snakemake.log[0]), acquire_gpus(gpus_requested(snakemake.resources)):
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
