from lwise.core.jobs import rule_job
from lwise.report.stimuli import SummaryConfig, stimulus_summary

with rule_job(snakemake, gpus=True):
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
