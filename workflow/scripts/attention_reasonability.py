from lwise.alignment.attention.evaluate import reasonability_matrix
from lwise.core.jobs import rule_job

with rule_job(snakemake):
    reasonability_matrix(snakemake.input.iou, snakemake.input.assessment, snakemake.output[0])
