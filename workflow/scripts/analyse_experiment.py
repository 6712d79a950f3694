from lwise.core.logs import script_logging
from lwise.experiments.analysis import analyse

with script_logging(snakemake.log[0]):
    analyse(
        snakemake.input.responses,
        snakemake.output[0],
        snakemake.params.analysis,
        title=f"{snakemake.wildcards.dataset}:",
    )
