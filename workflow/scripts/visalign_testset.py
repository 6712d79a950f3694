from lwise.alignment.visalign.testset import build_testset
from lwise.core.jobs import rule_job

with rule_job(snakemake):
    build_testset(
        snakemake.params.kind,
        snakemake.input[0],
        snakemake.output[0],
        options=snakemake.params.options,
        synthetic=snakemake.params.synthetic,
    )
