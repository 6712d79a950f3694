from lwise.core.gpuslots import acquire_gpus, gpus_requested
from lwise.core.logs import script_logging
from lwise.report.stimuli import SummaryConfig, stimulus_summary

with script_logging(snakemake.log[0]), acquire_gpus(gpus_requested(snakemake.resources)):
    stimulus_summary(
        {name: snakemake.input[name] for name in snakemake.params.sets},
        snakemake.input.model,
        snakemake.output.csv,
        snakemake.output.html,
        cfg=SummaryConfig.from_config(snakemake.params.scoring),
        trusted=snakemake.params.trusted,
        workers=snakemake.threads,
        dataset=snakemake.wildcards.dataset,
    )
