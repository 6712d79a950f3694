from lwise.core.logs import script_logging
from lwise.data.imagefolder import BuildOptions, build, dataset_roots

with script_logging(snakemake.log[0]):
    build(
        snakemake.input.dirmap,
        snakemake.output[0],
        BuildOptions.from_config(snakemake.params.build),
        snakemake.threads,
        dataset_roots(snakemake.input.raw, snakemake.params.image_roots),
    )
