from lwise.core.logs import script_logging
from lwise.guide.export import export_checkpoint

with script_logging(snakemake.log[0]):
    export_checkpoint(
        snakemake.input[0], snakemake.output.weights, trusted=snakemake.params.trusted
    )
