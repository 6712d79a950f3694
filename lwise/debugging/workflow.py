"""What rules/debugging.smk asks of the config: which datasets run, their methods and seeds, the
model debugged, and what `rule all` builds. Standard library only, so parsing stays fast.

Paths under results/<ds>/debugging/:

    data/base.csv, data/pool.csv          training and evaluation rows; the candidate pool
    base/model.pt                         the base model (only for a pool held out of train)
    signals/                              the model's predictions, embeddings, GT logits
    failures/slices.csv, images.csv, grid.png
    runs/<method>/seed<k>/                debug set, predictions, metrics of one fine-tuning
    comparison.csv, comparison.png
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

__all__ = [
    "METHOD_PATTERN",
    "base_trained",
    "data_inputs",
    "data_settings",
    "datasets",
    "folder",
    "generated",
    "generated_names",
    "job_settings",
    "methods",
    "model_path",
    "outputs",
    "pool_dirmap",
    "run_metrics",
    "seeds",
    "section",
]

METHOD_PATTERN = r"[A-Za-z0-9][A-Za-z0-9_-]*"
# Keys that list jobs or name one dataset's inputs: a change to them reruns only what it adds.
_JOB_LISTS = ("datasets", "methods", "seeds", "pool", "generated")


def section(config: Mapping) -> Mapping:
    """The `debugging` section, its defaults filled in by the workflow's schema validation."""
    return config["debugging"]


def datasets(config: Mapping, all_datasets: Sequence[str]) -> list[str]:
    """The datasets debugged (`debugging.datasets`; null: all, the default []: none)."""
    chosen = section(config)["datasets"]
    return list(all_datasets) if chosen is None else [d for d in chosen if d in all_datasets]


def folder(dataset: str) -> str:
    return f"results/{dataset}/debugging"


def pool_dirmap(config: Mapping, dataset: str) -> str | None:
    """The dataset's configured pool dirmap, or None (a pool held out of a split)."""
    return section(config)["pool"]["dirmaps"].get(dataset)


def base_trained(config: Mapping, dataset: str) -> bool:
    """Whether the stage trains its own base model: the pool is held out of the train split."""
    split = section(config)["pool"]["holdout_split"]
    return pool_dirmap(config, dataset) is None and split == "train"


def model_path(config: Mapping, dataset: str, guide_path: str) -> str:
    """The model debugged: the stage's base model, or the guide model at `guide_path`."""
    return f"{folder(dataset)}/base/model.pt" if base_trained(config, dataset) else guide_path


def generated(config: Mapping, dataset: str) -> dict[str, str]:
    """{G-<name>: folder or dirmap} of the dataset's generated images."""
    return dict(section(config)["generated"].get(dataset, {}))


def methods(config: Mapping, dataset: str) -> list[str]:
    """The configured selection methods, then the dataset's G-* sets."""
    return list(section(config)["methods"]) + generated_names(config, dataset)


def seeds(config: Mapping) -> list[int]:
    return list(section(config)["seeds"])


def data_settings(config: Mapping) -> dict:
    """What the data job uses: the job settings and the pool's hold-out (not its dirmaps,
    which are inputs)."""
    pool = {k: v for k, v in section(config)["pool"].items() if k != "dirmaps"}
    return {**job_settings(config), "pool": pool}


def data_inputs(config: Mapping, dataset: str) -> dict:
    """The data job's configured inputs: `pool` (the pool dirmap, when the dataset has one) and
    `generated` (the G-* sets' folders or dirmaps, in `generated_names` order). A missing path
    is an error naming its key."""
    named = {"pool": pool_dirmap(config, dataset)} if pool_dirmap(config, dataset) else {}
    sets = generated(config, dataset)
    for key, path in [*named.items(), *sets.items()]:
        if not os.path.exists(path):
            raise FileNotFoundError(
                f"config debugging: dataset {dataset!r}, {key} {path!r} does not exist "
                f"(relative paths are relative to {os.getcwd()})"
            )
    return named | {"generated": [sets[name] for name in generated_names(config, dataset)]}


def generated_names(config: Mapping, dataset: str) -> list[str]:
    return sorted(generated(config, dataset))


def job_settings(config: Mapping) -> dict:
    """The section but its job lists and per-dataset inputs, so adding a method, a seed or a
    dataset leaves the other jobs up to date."""
    return {k: v for k, v in section(config).items() if k not in _JOB_LISTS}


def run_metrics(config: Mapping, dataset: str) -> list[str]:
    """The metrics files of every method × seed of `dataset`."""
    return [
        f"{folder(dataset)}/runs/{method}/seed{seed}/metrics.csv"
        for method in methods(config, dataset)
        for seed in seeds(config)
    ]


def outputs(config: Mapping, all_datasets: Sequence[str], dataset: str) -> list[str]:
    """What `rule all` builds for `dataset`: the failure grid and the comparison."""
    if dataset not in datasets(config, all_datasets):
        return []
    return [
        f"{folder(dataset)}/failures/grid.png",
        f"{folder(dataset)}/comparison.csv",
        f"{folder(dataset)}/comparison.png",
    ]
