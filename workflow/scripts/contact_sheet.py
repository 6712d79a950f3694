from pathlib import Path

from lwise.core.logs import script_logging
from lwise.stimuli.contact_sheet import contact_sheet

with script_logging(snakemake.log[0]):
    versions = {Path(p).name: p for p in snakemake.input}
    contact_sheet(versions, snakemake.output[0], per_class=snakemake.params.per_class)
