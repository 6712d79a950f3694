"""What rules/correspondence.smk asks of the config: which datasets run, what `rule all` builds,
and where each dataset's team trials come from. Paths: results/<ds>/correspondence/."""

from __future__ import annotations

from collections.abc import Mapping, Sequence


def section(config: Mapping) -> Mapping:
    return config["correspondence"]


def datasets(config: Mapping, all_datasets: Sequence[str]) -> list[str]:
    """The datasets the correspondence rules run on (`correspondence.datasets`, null: all)."""
    chosen = section(config)["datasets"]
    return list(all_datasets) if chosen is None else [d for d in chosen if d in all_datasets]


def trials_entry(config: Mapping, dataset: str) -> Mapping | None:
    return section(config)["teams"]["trials"].get(dataset)


def team_source(config: Mapping, dataset: str) -> str:
    """ "human" when the dataset has real team trials, else "synthetic" (simulated)."""
    return "human" if trials_entry(config, dataset) else "synthetic"


def trials_file(config: Mapping, dataset: str) -> str:
    entry = trials_entry(config, dataset)
    if entry:
        return entry["path"]
    return f"results/{dataset}/correspondence/team_trials_synthetic.csv"


def trials_layout(config: Mapping, dataset: str) -> str:
    entry = trials_entry(config, dataset)
    return entry.get("layout", "auto") if entry else "lwise"


def team_settings(config: Mapping) -> dict:
    """The teams settings but the trial files, so one dataset's file reruns only its jobs."""
    return {k: v for k, v in section(config)["teams"].items() if k != "trials"}


def outputs(config: Mapping, all_datasets: Sequence[str], dataset: str) -> list[str]:
    """What `rule all` builds for `dataset`: accuracy, explanations and team metrics."""
    if dataset not in datasets(config, all_datasets):
        return []
    folder = f"results/{dataset}/correspondence"
    return [
        f"{folder}/accuracy.csv",
        f"{folder}/explanations.png",
        f"{folder}/teams_{team_source(config, dataset)}.csv",
    ]
