from pathlib import Path

from lwise.core.logs import script_logging
from lwise.experiments.simulate import simulate_learners

with script_logging(snakemake.log[0]):
    simulate_learners(
        Path(snakemake.input[0]) / "trials.csv", snakemake.output[0], snakemake.params.simulation
    )
