from lwise.core.jobs import rule_job
from lwise.debugging.failures import find
from lwise.debugging.settings import DebuggingConfig

with rule_job(snakemake, gpus=True):
    find(
        snakemake.input.base,
        snakemake.input.pool,
        snakemake.input.model,
        out_signals_pool=snakemake.output.signals_pool,
        out_signals_eval=snakemake.output.signals_eval,
        out_embeddings=snakemake.output.embeddings,
        out_slices=snakemake.output.slices,
        out_images=snakemake.output.images,
        out_grid=snakemake.output.grid,
        cfg=DebuggingConfig.from_config(snakemake.params.settings),
        trusted=snakemake.params.trusted,
        workers=snakemake.threads - 1,
    )
