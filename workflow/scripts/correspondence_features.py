from pathlib import Path

from lwise.alignment.correspondence.classify import build_features
from lwise.core.gpuslots import acquire_gpus, gpus_requested
from lwise.core.logs import script_logging

with script_logging(snakemake.log[0]), acquire_gpus(gpus_requested(snakemake.resources)):
    build_features(
        Path(snakemake.input.images) / "dirmap.csv",
        snakemake.input.model,
        snakemake.output[0],
        trusted=snakemake.params.trusted,
        batch_size=snakemake.params.settings["feature_batch_size"],
        max_map_cache_mb=snakemake.params.settings["max_map_cache_mb"],
        workers=snakemake.threads - 1,
    )
