from lwise.core.logs import script_logging
from lwise.report.alignment import alignment_table, summary_csv_of

with script_logging(snakemake.log[0]):
    alignment_table(
        summary_csv_of(snakemake.input[0]), snakemake.output[0], dataset=snakemake.wildcards.dataset
    )
