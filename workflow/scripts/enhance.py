from lwise.core.gpuslots import acquire_gpus, gpus_requested
from lwise.core.logs import script_logging
from lwise.stimuli.enhance import enhance

with script_logging(snakemake.log[0]), acquire_gpus(gpus_requested(snakemake.resources)):
    cfg = snakemake.params.enhance
    enhance(
        snakemake.input.dirmap,
        snakemake.input.model,
        snakemake.output[0],
        key_root=snakemake.input.images,
        eps=snakemake.params.eps,
        objective=snakemake.wildcards.objective,
        steps=cfg["steps"],
        step_size=cfg["step_size"],
        constraint=cfg["constraint"],
        direction=cfg["direction"],
        diverge_from=cfg["diverge_from"],
        views=cfg["views"],
        fmt=cfg["format"],
        jpeg_quality=cfg["jpeg_quality"],
        batch_size=cfg["batch_size"],
        fast_dtype=cfg["fast_dtype"],
        workers=snakemake.threads,
        trusted=snakemake.params.trusted,
    )
