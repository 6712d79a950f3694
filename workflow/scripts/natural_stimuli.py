from lwise.core.logs import script_logging
from lwise.stimuli.natural import NaturalConfig, write_natural

with script_logging(snakemake.log[0]):
    write_natural(
        snakemake.input.dirmap,
        snakemake.input.model,
        snakemake.output[0],
        key_root=snakemake.input.images,
        cfg=NaturalConfig.from_config(snakemake.params.enhance),
        workers=snakemake.threads,
        trusted=snakemake.params.trusted,
        pixels=(snakemake.input.pixels, snakemake.input.index),
    )
