from lwise.core.jobs import rule_job
from lwise.guide.export import export_checkpoint

with rule_job(snakemake):
    export_checkpoint(
        snakemake.input[0], snakemake.output.weights, trusted=snakemake.params.trusted
    )
