"""Stage 8 (experiments): what rules/experiments.smk reads from the config, in one place.

Imports only the standard library, so parsing the Snakefile stays fast.
"""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["RUN_KEYS", "STUDY_SET", "outputs", "source", "study_settings", "responses"]

# Keys of the `experiments` section that are not settings of lwise.experiments.study.
RUN_KEYS = ("enabled", "publish", "responses", "simulation", "analysis")
# The `{set}` of the upload templates for the published study, and its folder under upload/.
STUDY_SET = "study"


def source(config: Mapping, dataset: str) -> str:
    """`human` when `experiments.responses` names the dataset's responses, else `synthetic`."""
    return "human" if dataset in config["experiments"].get("responses", {}) else "synthetic"


def outputs(config: Mapping, dataset: str) -> list[str]:
    """What `rule all` builds for a dataset: the study, its analysis and, with `publish`, the
    manifest of its upload (none when disabled)."""
    cfg = config["experiments"]
    if not cfg["enabled"]:
        return []
    out = [
        f"results/{dataset}/experiments/study",
        f"results/{dataset}/experiments/analysis_{source(config, dataset)}",
    ]
    if cfg["publish"]:
        out.append(f"results/{dataset}/upload/{STUDY_SET}/manifest.csv")
    return out


def study_settings(config: Mapping) -> dict:
    """The settings of the study itself (so changing the analysis does not rebuild it);
    `images: auto` is resolved by `lwise.experiments.study.image_mode` from the URLs."""
    return {k: v for k, v in config["experiments"].items() if k not in RUN_KEYS}


def responses(config: Mapping, dataset: str, kind: str) -> str:
    """The responses the analysis reads: the configured file (or folder) for "human", the
    synthetic learners' file otherwise."""
    if kind == "human":
        return config["experiments"]["responses"][dataset]
    return f"results/{dataset}/experiments/responses_synthetic.csv"
