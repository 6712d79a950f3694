from pathlib import Path

from lwise.core.jobs import rule_job
from lwise.stimuli.natural import preprocess_stimuli

with rule_job(snakemake):
    preprocess_stimuli(
        Path(snakemake.input.images) / "dirmap.csv",
        snakemake.input.model,
        snakemake.output.pixels,
        snakemake.output.index,
        key_root=snakemake.input.images,
        workers=snakemake.threads,
        trusted=snakemake.params.trusted,
    )
