from lwise.imagefolder import BuildOptions, build
from lwise.logs import script_logging

with script_logging(snakemake.log[0]):
    build(
        snakemake.input[0],
        snakemake.output[0],
        BuildOptions.from_config(snakemake.params.build),
        threads=snakemake.threads,
    )
