"""What rules/report.smk asks of the config: what `rule all` builds for the report and where the
training curves come from. Standard library only, so parsing the Snakefile stays fast.
Paths: results/<ds>/report/."""

from __future__ import annotations

from collections.abc import Mapping

__all__ = ["outputs", "training_metrics"]


def training_metrics(guide: Mapping, dataset: str) -> list[str]:
    """The training metrics of the dataset's guide model: none when a ready checkpoint is
    configured (nothing is trained), else the train_guide rule's table."""
    if guide.get("checkpoint"):
        return []
    return [f"results/{dataset}/guide/metrics.csv"]


def outputs(dataset: str, source: str) -> list[str]:
    """What `rule all` builds for `dataset`'s report; `source` is "human" or "synthetic"."""
    folder = f"results/{dataset}/report"
    return [
        f"{folder}/stimulus_summary.html",
        f"{folder}/difficulty_histogram.png",
        f"{folder}/training_curves.png",
        f"{folder}/alignment_summary_{source}.html",
    ]
