from lwise.core.logs import script_logging
from lwise.data.imagefolder import BuildOptions, build

with script_logging(snakemake.log[0]):
    build(
        snakemake.input[0],
        snakemake.output[0],
        BuildOptions.from_config(snakemake.params.build),
        threads=snakemake.threads,
    )
