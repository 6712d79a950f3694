from pathlib import Path

from lwise.alignment.evaluate import evaluate_alignment
from lwise.core.logs import script_logging

with script_logging(snakemake.log[0]):
    ev = snakemake.params.evaluation
    sets = {name: Path(snakemake.input[name]) / "dirmap.csv" for name in snakemake.params.sets}
    evaluate_alignment(
        sets["natural"],
        sets,
        snakemake.input.trials,
        snakemake.output[0],
        key_root=snakemake.input.images,
        probabilities_csv=snakemake.input.probabilities,
        costs=ev["costs"],
        folds=ev["folds"],
        n_boot=ev["n_boot"],
        seed=ev["seed"],
        outliers_sd=ev["outliers_sd"],
        synthetic=snakemake.wildcards.source == "synthetic",
        **snakemake.params.extras,
    )
