from lwise.core.jobs import gpu_job
from lwise.debugging.retrain import train_base
from lwise.debugging.settings import DebuggingConfig

with gpu_job(snakemake) as gpus:
    train_base(
        snakemake.input[0],
        snakemake.output.model,
        snakemake.output.metrics,
        snakemake.params.state_dir,
        snakemake.params.train,
        DebuggingConfig.from_config(snakemake.params.settings),
        gpus=len(gpus),
    )
