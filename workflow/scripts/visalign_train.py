from pathlib import Path

from lwise.alignment.visalign.baselines import train_baseline
from lwise.core.gpuslots import acquire_gpus, gpus_requested
from lwise.core.logs import script_logging

with script_logging(snakemake.log[0]), acquire_gpus(gpus_requested(snakemake.resources)):
    train_baseline(
        Path(snakemake.input[0]) / "dirmap.csv",
        snakemake.output.model,
        snakemake.output.metrics,
        snakemake.params.state_dir,
        snakemake.params.train,
    )
