from lwise.core.jobs import rule_job
from lwise.report.figures import ReportConfig, difficulty_histogram

with rule_job(snakemake):
    cfg = ReportConfig.from_config(snakemake.params.report)
    difficulty_histogram(snakemake.input[0], snakemake.output[0], cfg=cfg)
