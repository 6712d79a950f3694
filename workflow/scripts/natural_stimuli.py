from lwise.core.jobs import rule_job
from lwise.stimuli.natural import NaturalConfig, write_natural

with rule_job(snakemake):
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
