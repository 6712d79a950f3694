from pathlib import Path

from lwise.alignment.attention.run import finetune
from lwise.core.jobs import rule_job

with rule_job(snakemake, gpus=True):
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
