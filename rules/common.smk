import re

from snakemake.utils import min_version, validate

min_version("9.0")


validate(config, "../schemas/config.schema.yaml")

DATASETS = list(config["datasets"])


wildcard_constraints:
    dataset="|".join(re.escape(d) for d in DATASETS),


def dataset_config(wildcards):
    return config["datasets"][wildcards.dataset]


def dataset_sources(wildcards):
    return dataset_config(wildcards)["sources"]


def dataset_definer(wildcards):
    return dataset_config(wildcards)["definer"]


def dataset_build(wildcards):
    return dataset_config(wildcards).get("build", {})


def final_outputs():
    return expand("results/{dataset}/imagefolder", dataset=DATASETS)
