from pathlib import Path

from lwise.alignment.attention.run import finetune
from lwise.core.gpuslots import acquire_gpus, gpus_requested
from lwise.core.logs import script_logging

with script_logging(snakemake.log[0]), acquire_gpus(gpus_requested(snakemake.resources)):
    finetune(
        Path(snakemake.input.images) / "dirmap.csv",
        snakemake.input.model,
        snakemake.input.masks,
        snakemake.output.phase1,
        snakemake.output.model,
        snakemake.output.history,
        snakemake.output.roles,
        updates=snakemake.input.updates,
        removals=snakemake.input.removals,
        reasonability=snakemake.input.get("reasonability"),
        settings=snakemake.params.settings,
        trusted=snakemake.params.trusted,
        threads=snakemake.threads,
    )
