from pathlib import Path

from lwise.alignment.visalign.baselines import train_baseline
from lwise.core.jobs import gpu_job

with gpu_job(snakemake):
    train_baseline(
        Path(snakemake.input[0]) / "dirmap.csv",
        snakemake.output.model,
        snakemake.output.metrics,
        snakemake.params.state_dir,
        snakemake.params.train,
    )
