"""The contract of an alignment analysis: its config, the context it gets, what it returns, and
the registry that `lwise.alignment.evaluate` runs them from.

An analysis is a function `(AlignmentContext) -> AnalysisResult`, registered by name:

    @register("difficulty")
    def run(ctx: AlignmentContext) -> AnalysisResult: ...

`evaluation.analyses` in the config names the ones to run (the schema's enum lists every
registered name; a test checks that they agree).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lwise.alignment.abstention import ABSTENTION
from lwise.alignment.inputs import AlignmentInputs
from lwise.core.config import ConfigError, Section

__all__ = [
    "ANALYSES",
    "AlignmentContext",
    "Analysis",
    "AnalysisResult",
    "EvaluationConfig",
    "SummaryRow",
    "ensemble_error",
    "register",
]


@dataclass(frozen=True)
class EvaluationConfig(Section):
    """The `evaluation` section of the config; its defaults live in
    schemas/config.schema.yaml, so every field is given here."""

    SECTION = "evaluation"

    analyses: tuple[str, ...]  # registered analysis names, run in this order
    # A name in lwise.alignment.abstention.ABSTENTION (VisAlign); all but msp run the guide
    # model (lwise.alignment.inputs.GuideInputs); an ensemble method cannot run on one model.
    abstention: str
    costs: tuple[float, ...]  # reliability-score costs of a wrong answer (VisAlign)
    folds: int  # stratified k-fold CV of the difficulty AUC
    n_boot: int  # bootstrap replicates of every CI
    outliers_sd: float | None  # logits beyond this many SD are dropped first; None keeps all
    seed: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "analyses", tuple(self.analyses))
        object.__setattr__(self, "costs", tuple(self.costs))
        method = ABSTENTION.get(self.abstention)
        if method is None:
            raise ConfigError(
                f"config evaluation.abstention {self.abstention!r}: unknown; known "
                f"{sorted(ABSTENTION)}"
            )
        if method.ensemble:
            raise ConfigError(ensemble_error(self.abstention))

    @property
    def needs_model(self) -> bool:
        """Whether the VisAlign analysis runs and its abstention method needs the guide model."""
        return "visalign" in self.analyses and ABSTENTION[self.abstention].needs_model


def ensemble_error(method: str) -> str:
    """Why `evaluation.abstention` cannot name an ensemble method."""
    usable = [m for m, spec in ABSTENTION.items() if not spec.ensemble]
    return (
        f"config evaluation.abstention {method!r}: a Deep Ensemble averages the softmaxes of "
        "several models, and the alignment evaluation has one, the dataset's guide model; "
        f"choose one of {usable} here, or run {method} in the visalign section (a model with "
        "two or more seeds)"
    )


# (metric, group, value, ci_low, ci_high): one row of summary.csv, less its `synthetic` column.
SummaryRow = tuple[str, str, float, float, float]


@dataclass(frozen=True)
class AlignmentContext:
    """What every analysis gets: the checked inputs, the config, and the (temporary) output
    folder, for an analysis that writes files other than its tables and figures."""

    inputs: AlignmentInputs
    config: EvaluationConfig
    out_dir: Path
    # The visalign section's method settings for model-based abstention methods
    # (VisAlignConfig.method_settings(); empty: the schema's defaults).
    abstention_settings: Mapping[str, Any] = field(default_factory=dict)
    workers: int = 0  # image-loading processes of a model-based abstention method


@dataclass
class AnalysisResult:
    """Tables (written as `<name>.csv`, with a `synthetic` column added), figures (written as
    `<name>.png`) and the analysis's rows of summary.csv."""

    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)  # matplotlib Figures
    summary: list[SummaryRow] = field(default_factory=list)


Analysis = Callable[[AlignmentContext], AnalysisResult]
ANALYSES: dict[str, Analysis] = {}


def register(name: str) -> Callable[[Analysis], Analysis]:
    def deco(fn: Analysis) -> Analysis:
        ANALYSES[name] = fn
        return fn

    return deco
