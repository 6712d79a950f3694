from lwise.core.logs import script_logging
from lwise.guide.checkpoints import GuideFileConfig
from lwise.guide.export import import_checkpoint

with script_logging(snakemake.log[0]):
    import_checkpoint(
        snakemake.input[0],
        snakemake.output[0],
        **GuideFileConfig.from_config(snakemake.params.loader).loader_args(),
    )
