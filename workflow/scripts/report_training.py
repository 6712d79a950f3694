from lwise.core.jobs import rule_job
from lwise.report.figures import training_curves

with rule_job(snakemake):
    training_curves(
        snakemake.input[0] if snakemake.input else None,
        snakemake.output[0],
        checkpoint=snakemake.params.checkpoint,
    )
