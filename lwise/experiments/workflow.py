"""Stage 8 (experiments): what rules/experiments.smk reads from the config, in one place.

Imports only the standard library, so parsing the Snakefile stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["RUN_KEYS", "outputs", "source", "study_settings", "responses"]

# Keys of the `experiments` section that are not settings of lwise.experiments.study.
RUN_KEYS = ("enabled", "images", "responses", "simulation", "analysis")


def source(config: Mapping, dataset: str) -> str:
    """`human` when `experiments.responses` names the dataset's responses, else `synthetic`."""
    return "human" if dataset in config["experiments"].get("responses", {}) else "synthetic"


def outputs(config: Mapping, dataset: str) -> list[str]:
    """What `rule all` builds for a dataset: the study and its analysis (none when disabled)."""
    if not config["experiments"]["enabled"]:
        return []
    return [
        f"results/{dataset}/experiments/study",
        f"results/{dataset}/experiments/analysis_{source(config, dataset)}",
    ]


def study_settings(config: Mapping) -> dict:
    """The study settings, with `images: auto` resolved: a local upload server lives only for
    the run, so its URLs would be dead when the page is used; the images are copied instead."""
    cfg = config["experiments"]
    images = cfg["images"]
    if images == "auto":
        images = "copy" if config["upload"]["endpoint_url"] == "local" else "url"
    return {**{k: v for k, v in cfg.items() if k not in RUN_KEYS}, "images": images}


def responses(config: Mapping, dataset: str, kind: str) -> str:
    """The responses the analysis reads: the configured file (or folder) for "human", the
    synthetic learners' file otherwise."""
    if kind == "human":
        return config["experiments"]["responses"][dataset]
    return f"results/{dataset}/experiments/responses_synthetic.csv"
