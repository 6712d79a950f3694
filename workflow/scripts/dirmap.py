from lwise.core.logs import script_logging
from lwise.data.definers import define

with script_logging(snakemake.log[0]):
    definer = snakemake.params.definer
    define(definer["type"], snakemake.input[0], snakemake.output[0], **definer.get("options", {}))
