from pathlib import Path

from lwise.core.logs import script_logging
from lwise.humans.simulate import SimulationConfig, simulate_observers

with script_logging(snakemake.log[0]):
    simulate_observers(
        Path(snakemake.input.natural) / "dirmap.csv",
        list(snakemake.input.keys()),
        snakemake.output[0],
        SimulationConfig.from_config(snakemake.params.simulation),
    )
