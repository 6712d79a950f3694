from pathlib import Path

from lwise.core.jobs import rule_job
from lwise.humans.simulate import SimulationConfig, simulate_observers

with rule_job(snakemake):
    simulate_observers(
        Path(snakemake.input.natural) / "dirmap.csv",
        list(snakemake.input.keys()),
        snakemake.output[0],
        SimulationConfig.from_config(snakemake.params.simulation),
    )
