from lwise.core.gpuslots import acquire_gpus, gpus_requested
from lwise.core.logs import script_logging
from lwise.debugging.retrain import train_base
from lwise.debugging.settings import DebuggingConfig

with script_logging(snakemake.log[0]), acquire_gpus(gpus_requested(snakemake.resources)) as gpus:
    train_base(
        snakemake.input[0],
        snakemake.output.model,
        snakemake.output.metrics,
        snakemake.params.state_dir,
        snakemake.params.train,
        DebuggingConfig.from_config(snakemake.params.settings),
        gpus=len(gpus),
    )
