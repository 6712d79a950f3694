from lwise.core.jobs import rule_job
from lwise.stimuli.enhance import EnhanceConfig, enhance

with rule_job(snakemake, gpus=True):
    enhance(
        snakemake.input.dirmap,
        snakemake.input.model,
        snakemake.output[0],
        key_root=snakemake.input.images,
        eps=snakemake.params.eps,
        objective=snakemake.wildcards.objective,
        cfg=EnhanceConfig.from_config(snakemake.params.enhance),
        workers=snakemake.threads,
        trusted=snakemake.params.trusted,
        pixels=(snakemake.input.pixels, snakemake.input.index),
    )
