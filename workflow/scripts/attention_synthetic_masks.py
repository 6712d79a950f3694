from pathlib import Path

from lwise.alignment.attention.masks import write_synthetic_masks
from lwise.core.logs import script_logging

with script_logging(snakemake.log[0]):
    write_synthetic_masks(
        Path(snakemake.input[0]) / "dirmap.csv",
        snakemake.output[0],
        contrast=snakemake.params.contrast,
    )
