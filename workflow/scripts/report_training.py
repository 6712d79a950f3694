from lwise.core.logs import script_logging
from lwise.report.figures import training_curves

with script_logging(snakemake.log[0]):
    training_curves(
        snakemake.input[0] if snakemake.input else None,
        snakemake.output[0],
        checkpoint=snakemake.params.checkpoint,
    )
