import re

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from lwise.core import config as lwise_config
from lwise.core import keys

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


def dataset_image_roots(wildcards):
    return dataset_config(wildcards).get("image_roots", [])


# Each rules file appends a function dataset -> [paths] for what `rule all` builds.
FINAL_OUTPUTS = []


def final_outputs():
    return [path for dataset in DATASETS for outputs in FINAL_OUTPUTS for path in outputs(dataset)]


def core_outputs(dataset):
    return [
        f"results/{dataset}/difficulty/dirmap.csv",
        f"results/{dataset}/stimuli/contact_sheet.png",
        f"results/{dataset}/alignment_{human_source(dataset)}",
    ] + [f"results/{dataset}/upload/{name}/dirmap.csv" for name in stimulus_set_names(dataset)]


FINAL_OUTPUTS.append(core_outputs)


wildcard_constraints:
    objective=keys.OBJECTIVE_PATTERN,
    eps=keys.EPS_PATTERN,
    set=keys.SET_PATTERN,
    source="human|synthetic",


def section(dataset, name):
    """A stage's settings: the top-level section, overridden key by key by the dataset's,
    checked against the section's schema (a dataset's override is checked only here)."""
    merged = dict(config[name])
    merged.update(config["datasets"][dataset].get(name, {}))
    try:
        lwise_config.validate(merged, name)
    except lwise_config.ConfigError as err:
        raise WorkflowError(f"dataset {dataset!r}: {err}") from None
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


def contact_sheet_inputs(wildcards):
    return [
        f"results/{wildcards.dataset}/stimuli/{name}"
        for name in stimulus_set_names(wildcards.dataset)
    ]


def guide_trusted(wildcards):
    return guide_settings(wildcards)["trusted"]


def contact_sheet_per_class(wildcards):
    return enhance_settings(wildcards)["contact_sheet_per_class"]


def upload_endpoint():
    endpoint = config["upload"]["endpoint_url"]
    if endpoint == "local":
        return "http://127.0.0.1:{}".format(config["upload"].get("local_port", 9900))
    return endpoint


def stimulus_set_names(dataset):
    cfg = section(dataset, "enhance")
    try:
        return keys.set_names(cfg["objectives"], cfg["epsilons"])
    except ValueError as err:
        raise WorkflowError(f"config: dataset {dataset!r}, enhance.epsilons: {err}") from err


def human_source(dataset):
    """ "human" when the dataset has real responses, else "synthetic" (simulated observers)."""
    return "human" if "humans" in config["datasets"][dataset] else "synthetic"


def trials_file(wildcards):
    humans = config["datasets"][wildcards.dataset].get("humans")
    if humans:
        return humans["trials"]
    return "results/{dataset}/humans/trials_synthetic.csv".format(**wildcards)


def stimulus_dirs(wildcards):
    return dict(zip(stimulus_set_names(wildcards.dataset), contact_sheet_inputs(wildcards)))


def human_extras(wildcards):
    humans = config["datasets"][wildcards.dataset].get("humans", {})
    return {
        "label_distributions_csv": humans.get("label_distributions"),
        "vanilla_dirmap_csv": humans.get("vanilla_dirmap"),
    }


def stimulus_set_names_of(wildcards):
    return stimulus_set_names(wildcards.dataset)


def enhance_job_settings(wildcards):
    """What one enhancement job uses: not the lists of epsilons and objectives, so adding an
    epsilon leaves the other epsilons' jobs up to date."""
    cfg = enhance_settings(wildcards)
    return {
        k: v
        for k, v in cfg.items()
        if k not in ("epsilons", "objectives", "contact_sheet_per_class")
    }


def natural_settings(wildcards):
    cfg = enhance_settings(wildcards)
    return {"format": cfg["format"], "jpeg_quality": cfg["jpeg_quality"]}
