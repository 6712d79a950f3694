from pathlib import Path

from lwise.alignment.visalign.report import evaluate
from lwise.alignment.visalign.settings import VisAlignConfig
from lwise.core.jobs import rule_job

with rule_job(snakemake):
    cfg = VisAlignConfig.from_config(snakemake.params.visalign)
    evaluate(
        Path(snakemake.input.testset) / "dirmap.csv",
        snakemake.params.scores,
        snakemake.output[0],
        methods=cfg.methods,
        rule=cfg.rule,
        costs=cfg.costs,
    )
