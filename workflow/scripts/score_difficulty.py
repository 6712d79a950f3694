from pathlib import Path

from lwise.core.jobs import gpu_job
from lwise.guide.score import ScoringConfig, score

with gpu_job(snakemake):
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
