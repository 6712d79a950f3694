from pathlib import Path

from lwise.alignment.visalign.report import evaluate
from lwise.alignment.visalign.settings import VisAlignConfig
from lwise.core.logs import script_logging

with script_logging(snakemake.log[0]):
    cfg = VisAlignConfig.from_config(snakemake.params.visalign)
    evaluate(
        Path(snakemake.input.testset) / "dirmap.csv",
        snakemake.params.scores,
        snakemake.output[0],
        methods=cfg.methods,
        rule=cfg.rule,
        costs=cfg.costs,
    )
