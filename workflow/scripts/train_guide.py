from pathlib import Path

from lwise.core.jobs import rule_job
from lwise.guide.train import TrainConfig, run_training

with rule_job(snakemake, gpus=True) as gpus:
    run_training(
        Path(snakemake.input.folder) / "dirmap.csv",
        snakemake.output.model,
        snakemake.output.metrics,
        snakemake.params.state_dir,
        TrainConfig.from_config(snakemake.params.train),
        gpus=len(gpus),
    )
