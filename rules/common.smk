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
    outputs = []
    for dataset in DATASETS:
        outputs += [
            f"results/{dataset}/difficulty/dirmap.csv",
            f"results/{dataset}/stimuli/contact_sheet.png",
        ]
    return outputs


wildcard_constraints:
    objective="logit|cross_entropy|logit_diverge",
    eps=r"[0-9]+(\.[0-9]+)?",


def section(dataset, name):
    """A stage's settings: the top-level section, overridden key by key by the dataset's."""
    merged = dict(config[name])
    merged.update(config["datasets"][dataset].get(name, {}))
    return merged


def guide_settings(wildcards):
    return section(wildcards.dataset, "guide")


def scoring_settings(wildcards):
    return section(wildcards.dataset, "scoring")


def enhance_settings(wildcards):
    return section(wildcards.dataset, "enhance")


def guide_model(wildcards):
    """A configured ready checkpoint, or the model the train_guide rule makes."""
    return guide_settings(wildcards).get("checkpoint") or "results/{dataset}/guide/model.pt".format(
        **wildcards
    )


def guide_gpus(wildcards):
    return guide_settings(wildcards).get("gpus", 1)


def eps_value(wildcards):
    return float(wildcards.eps)


def fmt_eps(eps):
    """8.0 -> "8", 0.25 -> "0.25": the epsilon as it appears in paths."""
    return f"{eps:g}"


def enhanced_sets(dataset):
    cfg = section(dataset, "enhance")
    return expand(
        "results/{dataset}/stimuli/{objective}_eps{eps}",
        dataset=dataset,
        objective=cfg["objectives"],
        eps=[fmt_eps(e) for e in cfg["epsilons"]],
    )


def contact_sheet_inputs(wildcards):
    return ["results/{dataset}/stimuli/natural".format(**wildcards)] + enhanced_sets(
        wildcards.dataset
    )


def guide_trusted(wildcards):
    return guide_settings(wildcards)["trusted"]


def contact_sheet_per_class(wildcards):
    return enhance_settings(wildcards)["contact_sheet_per_class"]
