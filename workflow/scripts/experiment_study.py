from lwise.core.logs import script_logging
from lwise.experiments.study import build_study

with script_logging(snakemake.log[0]):
    build_study(
        snakemake.input.difficulty,
        snakemake.params.imagefolder,
        {name: snakemake.input[name] for name in snakemake.params.sets},
        snakemake.params.stimuli,
        snakemake.output[0],
        snakemake.params.settings,
        dataset=snakemake.wildcards.dataset,
    )
