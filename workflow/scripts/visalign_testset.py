from lwise.alignment.visalign.testset import build_testset
from lwise.core.logs import script_logging

with script_logging(snakemake.log[0]):
    build_testset(
        snakemake.params.kind,
        snakemake.input[0],
        snakemake.output[0],
        options=snakemake.params.options,
        synthetic=snakemake.params.synthetic,
    )
