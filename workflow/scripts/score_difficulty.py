from pathlib import Path

from lwise.core.gpuslots import acquire_gpus, gpus_requested
from lwise.core.logs import script_logging
from lwise.guide.score import ScoringConfig, score

with script_logging(snakemake.log[0]), acquire_gpus(gpus_requested(snakemake.resources)):
    score(
        Path(snakemake.input.images) / "dirmap.csv",
        snakemake.input.model,
        snakemake.output.dirmap,
        snakemake.output.accuracy,
        snakemake.output.confusion,
        snakemake.output.probabilities,
        cfg=ScoringConfig.from_config(snakemake.params.scoring),
        workers=snakemake.threads,
        trusted=snakemake.params.trusted,
    )
