from pathlib import Path

from lwise.alignment.evaluate import EvaluationConfig, evaluate_alignment
from lwise.core.jobs import rule_job
from lwise.core.keys import NATURAL

with rule_job(snakemake, gpus=True):
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
        # The guide model only where evaluation.abstention runs it (rules/evaluate.smk).
        guide_model=snakemake.input.get("model"),
        guide_trusted=snakemake.params.trusted,
        train_dirmap_csv=Path(snakemake.input.images) / "dirmap.csv",
        abstention_settings=snakemake.params.abstention,
        workers=snakemake.threads - 1,
        **snakemake.params.extras,
    )
