from pathlib import Path

from lwise.alignment.evaluate import simulate_trials
from lwise.core.logs import script_logging

with script_logging(snakemake.log[0]):
    sim = snakemake.params.simulation
    simulate_trials(
        Path(snakemake.input.natural) / "dirmap.csv",
        [name for name in snakemake.input.keys()],
        snakemake.output[0],
        n_participants=sim["n_participants"],
        boost_per_eps=sim["boost_per_eps"],
        seed=sim["seed"],
    )
