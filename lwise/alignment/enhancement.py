"""Enhancement effect: human accuracy per stimulus set (natural, each epsilon) with Wilson 95 %
CIs, and L-WISE's chi-square test of each set against natural (`notebooks/make_figs.ipynb`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import pandas as pd
from scipy import stats

from lwise.alignment import metrics, summary
from lwise.alignment.analysis import AlignmentContext, AnalysisResult, SummaryRow, register
from lwise.alignment.plots import plot_enhancement_effect
from lwise.core.keys import NATURAL, set_epsilon

__all__ = ["enhancement_effect", "summary_rows"]

log = logging.getLogger(__name__)


def _chi_square_p(k1: int, n1: int, k0: int, n0: int) -> float:
    """p of L-WISE's chi-square test (scipy default, Yates-corrected) of two proportions."""
    table = np.array([[k1, n1 - k1], [k0, n0 - k0]])
    if (table.sum(axis=0) == 0).any():  # everyone right (or wrong) in both: no test possible
        return float("nan")
    return float(stats.chi2_contingency(table).pvalue)


def enhancement_effect(trials: pd.DataFrame, sets: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """Human accuracy per stimulus set with Wilson 95 % CIs, ordered by epsilon.

    `sets` maps each set name to its dirmap (im_path = key). Per set also: the gain and
    chi-square p against natural, and the mean achieved L2 distance and ground-truth-logit gain
    (`l2_distance`, `logit_gain`; 0 for natural) over the images shown in that set's trials.
    """
    table = metrics.condition_accuracy(trials, "condition")
    natural = (
        table.set_index("condition").loc[NATURAL] if NATURAL in set(table["condition"]) else None
    )
    rows = []
    for _, row in table.iterrows():
        name = row["condition"]
        df = sets[name].set_index("im_path")
        shown = df.loc[sorted(set(trials.loc[trials["condition"] == name, "image"]))]
        extra = {
            "eps": _eps_of(name, df),
            "objective": str(df["objective"].iloc[0]) if "objective" in df.columns else name,
            "n_images": len(shown),
        }
        for column in ("l2_distance", "logit_gain"):
            if column in shown.columns:
                extra[f"mean_{column}"] = float(pd.to_numeric(shown[column]).mean())
            else:
                extra[f"mean_{column}"] = 0.0 if name == NATURAL else float("nan")
        if natural is not None:
            extra["accuracy_gain_vs_natural"] = row["accuracy"] - natural["accuracy"]
            extra["chi2_p_vs_natural"] = (
                float("nan")
                if name == NATURAL
                else _chi_square_p(row["n_correct"], row["n"], natural["n_correct"], natural["n"])
            )
        rows.append(row.to_dict() | extra)
    out = pd.DataFrame(rows)
    order = out.assign(_nan=out["eps"].isna()).sort_values(["_nan", "eps", "condition"]).index
    return out.loc[order].reset_index(drop=True)


def _eps_of(name: str, df: pd.DataFrame) -> float:
    """A set's epsilon: its dirmap's `eps` column when constant, else parsed from its name,
    NaN for sets with neither (e.g. a CLAHE control)."""
    if "eps" in df.columns:
        values = pd.to_numeric(df["eps"], errors="coerce").unique()
        if len(values) == 1 and np.isfinite(values[0]):
            return float(values[0])
    try:
        return set_epsilon(name)
    except ValueError:
        return float("nan")


def summary_rows(table: pd.DataFrame) -> list[SummaryRow]:
    """Human accuracy (with CI) per set; each enhanced set's gain over natural."""
    rows = []
    for _, r in table.iterrows():
        rows.append(
            summary.row("human_accuracy", r["condition"], r["accuracy"], r["ci_low"], r["ci_high"])
        )
        if "accuracy_gain_vs_natural" in r and r["condition"] != NATURAL:
            rows.append(
                summary.row(
                    "accuracy_gain_vs_natural", r["condition"], r["accuracy_gain_vs_natural"]
                )
            )
    return rows


@register("enhancement")
def run(ctx: AlignmentContext) -> AnalysisResult:
    """enhancement_effect.csv and enhancement_effect.png, over every stimulus set."""
    data = ctx.inputs
    table = enhancement_effect(data.trials, data.sets)
    log.info(
        "enhancement effect: accuracy per set %s",
        dict(zip(table["condition"], table["accuracy"].round(3), strict=True)),
    )
    return AnalysisResult(
        tables={"enhancement_effect": table},
        figures={"enhancement_effect": plot_enhancement_effect(table, synthetic=data.synthetic)},
        summary=summary_rows(table),
    )
