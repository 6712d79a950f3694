from lwise.core.jobs import rule_job
from lwise.debugging.compare import run

with rule_job(snakemake):
    run(
        list(snakemake.input.metrics),
        snakemake.input.scored,
        snakemake.input.slices,
        snakemake.output.table,
        snakemake.output.plot,
        eval_split=snakemake.params.eval_split,
        dataset=snakemake.wildcards.dataset,
    )
