from pathlib import Path

from lwise.core.logs import script_logging
from lwise.debugging.data import prepare
from lwise.debugging.settings import DebuggingConfig

with script_logging(snakemake.log[0]):
    prepare(
        Path(snakemake.input.images) / "dirmap.csv",
        snakemake.output.base,
        snakemake.output.pool,
        DebuggingConfig.from_config(snakemake.params.settings),
        pool_csv=snakemake.input.get("pool"),
        generated=dict(zip(snakemake.params.generated, snakemake.input.generated, strict=True)),
    )
