# Data debugging (AACA's selection baselines and L-WISE's difficulty as a selection signal):
# failure slices of the guide model, debug sets chosen from a pool of extra labelled images by
# each method, fine-tuning with each over seeds, comparison. Paths: results/<ds>/debugging/
# (lwise/debugging/workflow.py lists them).


from lwise.debugging import workflow as debugging

FINAL_OUTPUTS.append(lambda dataset: debugging.outputs(config, DATASETS, dataset))


wildcard_constraints:
    method=debugging.METHOD_PATTERN,
    seed=r"\d+",


rule debug_data:
    """The training and evaluation rows, and the pool: a dirmap, or held out of a split."""
    input:
        unpack(lambda wc: debugging.data_inputs(config, wc.dataset)),
        images="results/{dataset}/imagefolder",
    output:
        base="results/{dataset}/debugging/data/base.csv",
        pool="results/{dataset}/debugging/data/pool.csv",
    log:
        "results/logs/{dataset}/debug_data.log",
    benchmark:
        "results/benchmarks/{dataset}/debug_data.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        settings=debugging.data_settings(config),
        generated=lambda wc: debugging.generated_names(config, wc.dataset),
    script:
        "../workflow/scripts/debug_data.py"


rule debug_base:
    """The base model, trained like the guide without the pool held out of the train split."""
    input:
        "results/{dataset}/debugging/data/base.csv",
    output:
        model="results/{dataset}/debugging/base/model.pt",
        metrics="results/{dataset}/debugging/base/metrics.csv",
    log:
        "results/logs/{dataset}/debug_base.log",
    benchmark:
        "results/benchmarks/{dataset}/debug_base.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 4
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=2880,
    params:
        settings=debugging.job_settings(config),
        train=lambda wc: guide_settings(wc)["train"],
        # Resume state lives beside the outputs, which Snakemake deletes when a job fails.
        state_dir="results/{dataset}/debugging/base/resume",
    script:
        "../workflow/scripts/debug_base.py"


rule debug_failures:
    """The model's predictions, GT logits, entropies and embeddings; failure slices; a grid."""
    input:
        base="results/{dataset}/debugging/data/base.csv",
        pool="results/{dataset}/debugging/data/pool.csv",
        model=lambda wc: debugging.model_path(config, wc.dataset, guide_model(wc)),
    output:
        signals_pool="results/{dataset}/debugging/signals/pool.csv",
        signals_eval="results/{dataset}/debugging/signals/eval.csv",
        embeddings="results/{dataset}/debugging/signals/embeddings.npz",
        slices=report(
            "results/{dataset}/debugging/failures/slices.csv",
            caption="../report/debugging_slices.rst",
            category="Data debugging",
            subcategory="{dataset}",
        ),
        images="results/{dataset}/debugging/failures/images.csv",
        grid=report(
            "results/{dataset}/debugging/failures/grid.png",
            caption="../report/debugging_failures.rst",
            category="Data debugging",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/{dataset}/debug_failures.log",
    benchmark:
        "results/benchmarks/{dataset}/debug_failures.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 2
    resources:
        gpu=1,
        mem_mb=8000,
        runtime=240,
    params:
        settings=debugging.job_settings(config),
        trusted=guide_trusted,
    script:
        "../workflow/scripts/debug_failures.py"


rule debug_retrain:
    """One method and seed: its debug set, fine-tuning with it, accuracy on the slices."""
    input:
        base="results/{dataset}/debugging/data/base.csv",
        pool="results/{dataset}/debugging/signals/pool.csv",
        scored="results/{dataset}/debugging/signals/eval.csv",
        embeddings="results/{dataset}/debugging/signals/embeddings.npz",
        slices="results/{dataset}/debugging/failures/slices.csv",
        model=lambda wc: debugging.model_path(config, wc.dataset, guide_model(wc)),
    output:
        debug_set="results/{dataset}/debugging/runs/{method}/seed{seed}/debug_set.csv",
        predictions="results/{dataset}/debugging/runs/{method}/seed{seed}/predictions.csv",
        metrics="results/{dataset}/debugging/runs/{method}/seed{seed}/metrics.csv",
    log:
        "results/logs/{dataset}/debug_retrain_{method}_seed{seed}.log",
    benchmark:
        "results/benchmarks/{dataset}/debug_retrain_{method}_seed{seed}.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        gpu=1,
        mem_mb=16000,
        runtime=2880,
    params:
        settings=debugging.job_settings(config),
        train=lambda wc: guide_settings(wc)["train"],
        trusted=guide_trusted,
        # The fine-tuning's resume state and model (kept with keep_models).
        work_dir="results/{dataset}/debugging/runs/{method}/seed{seed}/training",
    script:
        "../workflow/scripts/debug_retrain.py"


rule debug_compare:
    """Accuracy per method overall, per class and on the failure slices, over seeds."""
    input:
        metrics=lambda wc: debugging.run_metrics(config, wc.dataset),
        scored="results/{dataset}/debugging/signals/eval.csv",
        slices="results/{dataset}/debugging/failures/slices.csv",
    output:
        table=report(
            "results/{dataset}/debugging/comparison.csv",
            caption="../report/debugging.rst",
            category="Data debugging",
            subcategory="{dataset}",
        ),
        plot=report(
            "results/{dataset}/debugging/comparison.png",
            caption="../report/debugging.rst",
            category="Data debugging",
            subcategory="{dataset}",
        ),
    log:
        "results/logs/{dataset}/debug_compare.log",
    benchmark:
        "results/benchmarks/{dataset}/debug_compare.tsv"
    conda:
        "../envs/lwise.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        eval_split=config["debugging"]["eval_split"],
    script:
        "../workflow/scripts/debug_compare.py"
