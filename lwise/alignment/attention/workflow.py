"""What rules/attention.smk asks of the config: each dataset's attention settings (the top-level
`attention` section, overridden key by key by the dataset's own), where its masks come from,
and what `rule all` builds. Paths: results/<ds>/attention_<human|synthetic>/."""

from __future__ import annotations

from collections.abc import Mapping

from lwise.core.config import defaults

__all__ = ["INPUT_KEYS", "assessment", "human_inputs", "outputs", "settings", "source"]

# Keys that name inputs or switch the stage on, not training settings: changing one of them
# reruns a job through its inputs, not its params.
INPUT_KEYS = (
    "enabled",
    "masks",
    "mask_updates",
    "mask_removals",
    "reasonability",
    "assessment",
    "synthetic_contrast",
)


def settings(config: Mapping, dataset: str) -> dict:
    """The dataset's attention settings: schema defaults, the top-level section, its own."""
    own = config["datasets"][dataset].get("attention", {})
    return {**defaults("attention"), **config.get("attention", {}), **own}


def training_settings(config: Mapping, dataset: str) -> dict:
    return {k: v for k, v in settings(config, dataset).items() if k not in INPUT_KEYS}


def source(config: Mapping, dataset: str) -> str:
    """ "human" when the dataset names its masks, else "synthetic" (made by the workflow)."""
    return "human" if settings(config, dataset)["masks"] else "synthetic"


def human_inputs(config: Mapping, dataset: str, wanted: str) -> dict:
    """The masks (with GRADIA's update and removal files) and, when given, the reasonability
    table, for the outputs of source `wanted`."""
    cfg = settings(config, dataset)
    if wanted != source(config, dataset):
        raise ValueError(
            f"dataset {dataset!r} has {source(config, dataset)} attention masks, not {wanted}"
        )
    inputs = {
        "masks": cfg["masks"] or f"results/{dataset}/attention_synthetic/masks",
        "updates": list(cfg["mask_updates"]),
        "removals": list(cfg["mask_removals"]),
    }
    if cfg["reasonability"]:
        inputs["reasonability"] = cfg["reasonability"]
    return inputs


def assessment(config: Mapping, dataset: str) -> str:
    path = settings(config, dataset)["assessment"]
    if not path:
        raise ValueError(
            f"dataset {dataset!r}: the reasonability matrix needs attention.assessment"
        )
    return path


def outputs(config: Mapping, dataset: str) -> list[str]:
    """What `rule all` builds for `dataset` when the stage is enabled: metrics, per-image IoU,
    the overlay grid and, with an assessment, the reasonability matrix on test."""
    cfg = settings(config, dataset)
    if not cfg["enabled"]:
        return []
    folder = f"results/{dataset}/attention_{source(config, dataset)}"
    paths = [f"{folder}/metrics.csv", f"{folder}/iou.csv", f"{folder}/overlays.png"]
    if cfg["assessment"]:
        paths.append(f"{folder}/reasonability_test.csv")
    return paths
