"""The contract of an alignment analysis: its config, the context it gets, what it returns, and
the registry that `lwise.alignment.evaluate` runs them from.

An analysis is a function `(AlignmentContext) -> AnalysisResult`, registered by name:

    @register("difficulty")
    def run(ctx: AlignmentContext) -> AnalysisResult: ...

`evaluation.analyses` in the config names the ones to run (the schema's enum lists every
registered name; a test checks that they agree).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from lwise.alignment.inputs import AlignmentInputs
from lwise.core.config import Section

__all__ = [
    "ANALYSES",
    "AlignmentContext",
    "Analysis",
    "AnalysisResult",
    "EvaluationConfig",
    "SummaryRow",
    "register",
]


@dataclass(frozen=True)
class EvaluationConfig(Section):
    """The `evaluation` section of the config; its defaults live in
    schemas/config.schema.yaml, so every field is given here."""

    SECTION = "evaluation"

    analyses: tuple[str, ...]  # registered analysis names, run in this order
    abstention: str  # a name in lwise.alignment.abstention.ABSTENTION (VisAlign)
    costs: tuple[float, ...]  # reliability-score costs of a wrong answer (VisAlign)
    folds: int  # stratified k-fold CV of the difficulty AUC
    n_boot: int  # bootstrap replicates of every CI
    outliers_sd: float | None  # logits beyond this many SD are dropped first; None keeps all
    seed: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "analyses", tuple(self.analyses))
        object.__setattr__(self, "costs", tuple(self.costs))


# (metric, group, value, ci_low, ci_high): one row of summary.csv, less its `synthetic` column.
SummaryRow = tuple[str, str, float, float, float]


@dataclass(frozen=True)
class AlignmentContext:
    """What every analysis gets: the checked inputs, the config, and the (temporary) output
    folder, for an analysis that writes files other than its tables and figures."""

    inputs: AlignmentInputs
    config: EvaluationConfig
    out_dir: Path


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
