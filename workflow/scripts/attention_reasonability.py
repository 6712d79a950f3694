from lwise.alignment.attention.evaluate import reasonability_matrix
from lwise.core.logs import script_logging

with script_logging(snakemake.log[0]):
    reasonability_matrix(snakemake.input.iou, snakemake.input.assessment, snakemake.output[0])
