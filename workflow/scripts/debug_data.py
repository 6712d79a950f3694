from pathlib import Path

from lwise.core.jobs import rule_job
from lwise.debugging.data import prepare
from lwise.debugging.settings import DebuggingConfig

with rule_job(snakemake):
    prepare(
        Path(snakemake.input.images) / "dirmap.csv",
        snakemake.output.base,
        snakemake.output.pool,
        DebuggingConfig.from_config(snakemake.params.settings),
        pool_csv=snakemake.input.get("pool"),
        generated=dict(zip(snakemake.params.generated, snakemake.input.generated, strict=True)),
    )
