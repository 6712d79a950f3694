from lwise.definers import define
from lwise.logs import script_logging

with script_logging(snakemake.log[0]):
    definer = snakemake.params.definer
    define(definer["type"], snakemake.input[0], snakemake.output[0], **definer.get("options", {}))
