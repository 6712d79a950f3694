from pathlib import Path

from lwise.core.logs import script_logging
from lwise.stimuli.contact_sheet import ContactSheetConfig, contact_sheet

with script_logging(snakemake.log[0]):
    contact_sheet(
        {Path(p).name: p for p in snakemake.input},
        snakemake.output[0],
        per_class=snakemake.params.per_class,
        cfg=ContactSheetConfig.from_config(snakemake.params.sheet),
        logit_column=snakemake.params.logit_column,
    )
