from lwise.core.jobs import rule_job
from lwise.experiments.analysis import analyse

with rule_job(snakemake):
    analyse(
        snakemake.input.responses,
        snakemake.output[0],
        snakemake.params.analysis,
        title=f"{snakemake.wildcards.dataset}:",
    )
