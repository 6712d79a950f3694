from lwise.core.jobs import rule_job
from lwise.guide.checkpoints import GuideFileConfig
from lwise.guide.export import import_checkpoint

with rule_job(snakemake):
    import_checkpoint(
        snakemake.input[0],
        snakemake.output[0],
        **GuideFileConfig.from_config(snakemake.params.loader).loader_args(),
    )
