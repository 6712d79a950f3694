from pathlib import Path

from lwise.alignment.correspondence.classify import evaluate
from lwise.core.gpuslots import acquire_gpus, gpus_requested
from lwise.core.logs import script_logging

with script_logging(snakemake.log[0]), acquire_gpus(gpus_requested(snakemake.resources)):
    evaluate(
        Path(snakemake.input.images) / "dirmap.csv",
        snakemake.input.model,
        snakemake.input.features,
        snakemake.output.accuracy,
        snakemake.output.predictions,
        snakemake.output.explanations,
        trusted=snakemake.params.trusted,
        workers=snakemake.threads - 1,
        settings=snakemake.params.settings,
    )
