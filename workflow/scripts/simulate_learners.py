from pathlib import Path

from lwise.core.jobs import rule_job
from lwise.experiments.simulate import simulate_learners

with rule_job(snakemake):
    simulate_learners(
        Path(snakemake.input[0]) / "trials.csv", snakemake.output[0], snakemake.params.simulation
    )
