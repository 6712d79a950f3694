from lwise.core.jobs import rule_job
from lwise.experiments.study import build_study

with rule_job(snakemake):
    build_study(
        snakemake.input.difficulty,
        snakemake.params.imagefolder,
        {name: snakemake.input[name] for name in snakemake.params.sets},
        snakemake.params.stimuli,
        snakemake.output[0],
        snakemake.params.settings,
        dataset=snakemake.wildcards.dataset,
    )
