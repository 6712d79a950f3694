from lwise.core.jobs import rule_job
from lwise.report.alignment import alignment_table, summary_csv_of

with rule_job(snakemake):
    alignment_table(
        summary_csv_of(snakemake.input[0]), snakemake.output[0], dataset=snakemake.wildcards.dataset
    )
