from lwise.core.jobs import rule_job
from lwise.debugging.retrain import run
from lwise.debugging.settings import DebuggingConfig

with rule_job(snakemake, gpus=True):
    run(
        base_csv=snakemake.input.base,
        pool_csv=snakemake.input.pool,
        eval_csv=snakemake.input.scored,
        embeddings=snakemake.input.embeddings,
        slices_csv=snakemake.input.slices,
        model_path=snakemake.input.model,
        method=snakemake.wildcards.method,
        seed=int(snakemake.wildcards.seed),
        out_debug_set=snakemake.output.debug_set,
        out_predictions=snakemake.output.predictions,
        out_metrics=snakemake.output.metrics,
        work_dir=snakemake.params.work_dir,
        cfg=DebuggingConfig.from_config(snakemake.params.settings),
        guide_train=snakemake.params.train,
        trusted=snakemake.params.trusted,
        threads=snakemake.threads,
    )
