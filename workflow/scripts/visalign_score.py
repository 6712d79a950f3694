from pathlib import Path

from lwise.alignment.visalign.scoring import score_model
from lwise.alignment.visalign.settings import VisAlignConfig
from lwise.core.jobs import gpu_job

with gpu_job(snakemake):
    cfg = VisAlignConfig.from_config(snakemake.params.visalign)
    score_model(
        snakemake.input.model,
        Path(snakemake.input.images) / "dirmap.csv",
        Path(snakemake.input.testset) / "dirmap.csv",
        snakemake.output[0],
        methods=cfg.methods,
        settings=cfg.method_settings(),
        rule=cfg.rule,
        trusted=snakemake.params.trusted,
        workers=snakemake.threads - 1,
    )
