from pathlib import Path

from lwise.core.jobs import rule_job
from lwise.guide.score import ScoringConfig, score

with rule_job(snakemake, gpus=True):
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
