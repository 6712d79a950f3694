from pathlib import Path

from lwise.alignment.correspondence.classify import evaluate
from lwise.core.jobs import rule_job

with rule_job(snakemake, gpus=True):
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
