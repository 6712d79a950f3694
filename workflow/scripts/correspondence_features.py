from pathlib import Path

from lwise.alignment.correspondence.classify import build_features
from lwise.core.jobs import rule_job

with rule_job(snakemake, gpus=True):
    build_features(
        Path(snakemake.input.images) / "dirmap.csv",
        snakemake.input.model,
        snakemake.output[0],
        trusted=snakemake.params.trusted,
        batch_size=snakemake.params.settings["feature_batch_size"],
        max_map_cache_mb=snakemake.params.settings["max_map_cache_mb"],
        workers=snakemake.threads - 1,
    )
