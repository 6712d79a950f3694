from lwise.core.jobs import rule_job
from lwise.data.imagefolder import BuildOptions, build, dataset_roots

with rule_job(snakemake):
    build(
        snakemake.input.dirmap,
        snakemake.output[0],
        BuildOptions.from_config(snakemake.params.build),
        snakemake.threads,
        dataset_roots(snakemake.input.raw, snakemake.params.image_roots),
    )
