from lwise.alignment.correspondence.teams import simulate_trials
from lwise.core.jobs import rule_job

with rule_job(snakemake):
    cfg = snakemake.params.teams
    simulate_trials(
        snakemake.input[0],
        snakemake.output[0],
        n_participants=cfg["n_participants"],
        trials_per_participant=cfg["trials_per_participant"],
        seed=cfg["seed"],
    )
