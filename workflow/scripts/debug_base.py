from lwise.core.jobs import rule_job
from lwise.debugging.retrain import train_base
from lwise.debugging.settings import DebuggingConfig

with rule_job(snakemake, gpus=True) as gpus:
    train_base(
        snakemake.input[0],
        snakemake.output.model,
        snakemake.output.metrics,
        snakemake.params.state_dir,
        snakemake.params.train,
        DebuggingConfig.from_config(snakemake.params.settings),
        gpus=len(gpus),
    )
