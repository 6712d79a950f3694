import dataclasses
import hashlib
import os
import re
from pathlib import Path

from snakemake.exceptions import WorkflowError
from snakemake.utils import min_version, validate

from lwise.core import config as lwise_config
from lwise.core import keys
from lwise.stimuli import settings as enhance_steps

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
    """The guide model that the rules load, either a configured checkpoint as import_guide
    writes it (in our format, recording everything) or the model train_guide makes."""
    name = "imported.pt" if guide_settings(wildcards).get("checkpoint") else "model.pt"
    return f"results/{wildcards.dataset}/guide/{name}"


def configured_file(dataset, key, path):
    """A file the config names, as a rule's input. Missing is an error: Snakemake itself says
    "Nothing to be done" when a missing input's outputs exist. Paths under results/ may be
    another rule's output (e.g. another dataset's guide model) and are left to Snakemake."""
    if not os.path.isfile(path) and Path(os.path.normpath(path)).parts[0] != "results":
        raise WorkflowError(
            f"dataset {dataset!r}: {key} {path!r} does not exist (relative paths are relative "
            f"to {os.getcwd()})"
        )
    return path


def guide_checkpoint(wildcards):
    """The configured guide.checkpoint (the input of import_guide)."""
    path = guide_settings(wildcards).get("checkpoint")
    if not path:
        raise WorkflowError(
            f"dataset {wildcards.dataset!r}: no guide.checkpoint to import; the train_guide "
            "rule makes the guide model"
        )
    return configured_file(wildcards.dataset, "guide.checkpoint", path)


def guide_loader(wildcards):
    """What import_guide reads the checkpoint with where the file does not record it."""
    cfg = guide_settings(wildcards)
    keys = ("trusted", "arch", "num_classes", "mean", "std", "image_size")
    return {k: cfg.get(k) for k in keys if k in cfg}


_SHA256 = {}


def file_sha256(path):
    """SHA-256 of a file, once per (path, size, mtime) in this process."""
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _SHA256:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _SHA256[key] = digest.hexdigest()
    return _SHA256[key]


def guide_checkpoint_sha256(wildcards):
    """A param, so a replaced checkpoint reruns import_guide (and all after it) even when its
    modification time is older than the outputs (a copy that kept its time)."""
    path = guide_checkpoint(wildcards)
    return file_sha256(path) if os.path.isfile(path) else None


def check_guide_files(dataset):
    """Checked when the workflow is parsed: an input function's error is not enough, since
    Snakemake drops a rule whose input function fails and takes its existing output as a
    source file ("Nothing to be done")."""
    cfg = section(dataset, "guide")
    if cfg.get("checkpoint"):
        configured_file(dataset, "guide.checkpoint", cfg["checkpoint"])
    elif cfg.get("train", {}).get("init_checkpoint"):
        configured_file(dataset, "guide.train.init_checkpoint", cfg["train"]["init_checkpoint"])


for _dataset in DATASETS:
    check_guide_files(_dataset)


def guide_gpus(wildcards):
    return guide_settings(wildcards).get("gpus", 1)


def gpu_job_threads(wildcards):
    """A stimulus job's share of the cores (its PNG encoders, which bound it): --cores over the
    GPU slots of --resources gpu, so that one job per GPU runs at once, at most 16 (on an H200
    16 encoders were the limit measured; a cluster run's unbounded cores stay sane)."""
    cores, gpus = (
        getattr(workflow.global_resources.get(k), "value", None) for k in ("_cores", "gpu")
    )
    if not isinstance(cores, int) or cores < 1:
        return 8
    return max(1, min(16, cores // (gpus if isinstance(gpus, int) and gpus > 0 else 1)))


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
        enhance_steps.check_steps(cfg.get("steps"), cfg["epsilons"])
    except ValueError as err:
        raise WorkflowError(f"config: dataset {dataset!r}: {err}") from err
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
    """What one enhancement job uses: not the lists of epsilons and objectives, and the steps
    of its own epsilon only, so adding an epsilon or changing another epsilon's steps leaves
    this job up to date (the views are in, so turning them on or off reruns it)."""
    cfg = enhance_settings(wildcards)
    settings = {
        k: v
        for k, v in cfg.items()
        if k not in ("epsilons", "objectives", "contact_sheet_per_class")
    }
    settings["steps"] = enhance_steps.steps_for(cfg.get("steps"), float(wildcards.eps))
    return settings


def natural_settings(wildcards):
    cfg = enhance_settings(wildcards)
    return {f.name: cfg[f.name] for f in dataclasses.fields(enhance_steps.Encoding)}
