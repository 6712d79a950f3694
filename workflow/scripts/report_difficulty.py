from lwise.core.logs import script_logging
from lwise.report.figures import ReportConfig, difficulty_histogram

with script_logging(snakemake.log[0]):
    cfg = ReportConfig.from_config(snakemake.params.report)
    difficulty_histogram(snakemake.input[0], snakemake.output[0], cfg=cfg)
