from lwise.core.logs import script_logging
from lwise.debugging.compare import run

with script_logging(snakemake.log[0]):
    run(
        list(snakemake.input.metrics),
        snakemake.input.scored,
        snakemake.input.slices,
        snakemake.output.table,
        snakemake.output.plot,
        eval_split=snakemake.params.eval_split,
        dataset=snakemake.wildcards.dataset,
    )
