from lwise.core.jobs import rule_job
from lwise.data.definers import define

with rule_job(snakemake):
    definer = snakemake.params.definer
    define(definer["type"], snakemake.input[0], snakemake.output[0], **definer.get("options", {}))
