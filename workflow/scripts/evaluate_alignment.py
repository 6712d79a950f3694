from pathlib import Path

from lwise.alignment.evaluate import EvaluationConfig, evaluate_alignment
from lwise.core.keys import NATURAL
from lwise.core.logs import script_logging

with script_logging(snakemake.log[0]):
    sets = {name: Path(snakemake.input[name]) / "dirmap.csv" for name in snakemake.params.sets}
    evaluate_alignment(
        sets[NATURAL],
        sets,
        snakemake.input.trials,
        snakemake.output[0],
        EvaluationConfig.from_config(snakemake.params.evaluation),
        logit_column=snakemake.params.logit_column,
        key_root=snakemake.input.images,
        probabilities_csv=snakemake.input.probabilities,
        synthetic=snakemake.wildcards.source == "synthetic",
        **snakemake.params.extras,
    )
