from pathlib import Path

from lwise.core.logs import script_logging
from lwise.stimuli.natural import preprocess_stimuli

with script_logging(snakemake.log[0]):
    preprocess_stimuli(
        Path(snakemake.input.images) / "dirmap.csv",
        snakemake.input.model,
        snakemake.output.pixels,
        snakemake.output.index,
        key_root=snakemake.input.images,
        workers=snakemake.threads,
        trusted=snakemake.params.trusted,
    )
