from pathlib import Path

from lwise.alignment.visalign.scoring import score_model
from lwise.alignment.visalign.settings import VisAlignConfig
from lwise.core.jobs import rule_job

with rule_job(snakemake, gpus=True):
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
