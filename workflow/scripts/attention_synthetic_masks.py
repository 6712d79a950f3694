from pathlib import Path

from lwise.alignment.attention.masks import write_synthetic_masks
from lwise.core.jobs import rule_job

with rule_job(snakemake):
    write_synthetic_masks(
        Path(snakemake.input[0]) / "dirmap.csv",
        snakemake.output[0],
        contrast=snakemake.params.contrast,
    )
