from lwise.alignment.correspondence.teams import report
from lwise.core.jobs import rule_job

with rule_job(snakemake):
    cfg = snakemake.params.teams
    report(
        snakemake.input.trials,
        snakemake.output.table,
        snakemake.output.plot,
        layout=snakemake.params.layout,
        baseline=cfg["baseline"],
        team_threshold=cfg["team_threshold"],
        synthetic=snakemake.wildcards.source == "synthetic",
    )
