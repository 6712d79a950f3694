from pathlib import Path

from lwise.core.gpuslots import acquire_gpus, gpus_requested
from lwise.core.logs import script_logging
from lwise.guide.train import TrainConfig, run_training

with script_logging(snakemake.log[0]), acquire_gpus(gpus_requested(snakemake.resources)) as gpus:
    run_training(
        Path(snakemake.input.folder) / "dirmap.csv",
        snakemake.output.model,
        snakemake.output.metrics,
        snakemake.params.state_dir,
        TrainConfig.from_config(snakemake.params.train),
        gpus=len(gpus),
    )
