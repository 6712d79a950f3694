from pathlib import Path

from lwise.core.jobs import rule_job
from lwise.stimuli.contact_sheet import ContactSheetConfig, contact_sheet

with rule_job(snakemake):
    contact_sheet(
        {Path(p).name: p for p in snakemake.input},
        snakemake.output[0],
        per_class=snakemake.params.per_class,
        cfg=ContactSheetConfig.from_config(snakemake.params.sheet),
        logit_column=snakemake.params.logit_column,
    )
