from pathlib import Path

from lwise.alignment.visalign.baselines import train_baseline
from lwise.core.jobs import rule_job

with rule_job(snakemake, gpus=True):
    train_baseline(
        Path(snakemake.input[0]) / "dirmap.csv",
        snakemake.output.model,
        snakemake.output.metrics,
        snakemake.params.state_dir,
        snakemake.params.train,
    )
