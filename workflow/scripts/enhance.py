from lwise.core.gpuslots import acquire_gpus, gpus_requested
from lwise.core.logs import script_logging
from lwise.stimuli.enhance import EnhanceConfig, enhance

with script_logging(snakemake.log[0]), acquire_gpus(gpus_requested(snakemake.resources)):
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
