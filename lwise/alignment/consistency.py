"""Model-vs-human consistency on natural images: accuracy difference, observed consistency and
error consistency (Cohen's kappa), as defined by Geirhos, Meding & Wichmann 2020 ("Beyond
accuracy: quantifying trial-by-trial behaviour of CNNs and humans by measuring error
consistency") and aggregated per participant as `bethgelab/model-vs-human`
(`modelvshuman/plotting/analyses.py`) does.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from lwise.alignment import metrics, summary
from lwise.alignment.analysis import AlignmentContext, AnalysisResult, SummaryRow, register
from lwise.alignment.inputs import per_trial
from lwise.alignment.plots import plot_consistency
from lwise.core.keys import NATURAL

__all__ = ["CONSISTENCY_METRICS", "consistency", "summary_rows"]


def _bootstrap_mean_ci(values: np.ndarray, n_boot: int, rng: np.random.Generator):
    """Percentile 95 % CI of the mean over resamples of `values` (here: participants)."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if len(values) < 2:
        return float("nan"), float("nan")
    means = values[rng.integers(0, len(values), (n_boot, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return float(low), float(high)


CONSISTENCY_METRICS = ("accuracy_difference", "observed_consistency", "error_consistency")


def consistency(
    trials: pd.DataFrame, model_correct: pd.Series, *, n_boot: int, seed: int
) -> pd.DataFrame:
    """Model-vs-human accuracy difference, observed and error consistency on natural trials.

    `trials`: natural trials (`participant`, `image`, `condition`, `correct`); `model_correct`:
    the guide model's correctness per image key. Only natural images are compared: the model's
    decision on an enhanced image is unknown (only its ground-truth logit is recorded), and the
    guide model trivially "agrees" with stimuli optimised for it.

    Rows: `level` = `participant` (one per participant, the unit of Geirhos et al.),
    `mean_over_participants` (their mean, as model-vs-human aggregates, with a percentile
    bootstrap CI over participants in `*_ci_low/high`), and `pooled` (all trials as one
    observer).
    """
    model = pd.DataFrame(
        {
            "image": model_correct.index.astype(str),
            "condition": NATURAL,
            "correct": model_correct.to_numpy(dtype=bool),
        }
    )
    per = metrics.model_vs_human(trials[["participant", "image", "condition", "correct"]], model)
    per.insert(0, "level", "participant")
    rng = np.random.default_rng(seed)
    mean = {"level": "mean_over_participants", "participant": "", "condition": NATURAL}
    mean["n"] = int(per["n"].sum())
    for column in ("human_accuracy", "model_accuracy", *CONSISTENCY_METRICS):
        mean[column] = float(per[column].mean())
        mean[f"{column}_ci_low"], mean[f"{column}_ci_high"] = _bootstrap_mean_ci(
            per[column].to_numpy(), n_boot, rng
        )
    h = trials["correct"].to_numpy(dtype=bool)
    m = per_trial(trials, model_correct.astype(float), "model 'correct'").astype(bool)
    pooled = {
        "level": "pooled",
        "participant": "",
        "condition": NATURAL,
        "n": len(h),
        "human_accuracy": float(h.mean()),
        "model_accuracy": float(m.mean()),
        "accuracy_difference": metrics.accuracy_difference(m, h),
        "observed_consistency": metrics.observed_consistency(m, h),
        "error_consistency": metrics.error_consistency(m, h),
    }
    return pd.concat([per, pd.DataFrame([mean, pooled])], ignore_index=True)


def summary_rows(table: pd.DataFrame) -> list[SummaryRow]:
    """Model accuracy and the three consistency metrics of the aggregate levels (mean over
    participants, with CIs; pooled)."""
    rows = []
    for _, r in table[table["level"] != "participant"].iterrows():
        for column in ("model_accuracy", *CONSISTENCY_METRICS):
            rows.append(
                summary.row(
                    column,
                    r["level"],
                    r[column],
                    r.get(f"{column}_ci_low", np.nan),
                    r.get(f"{column}_ci_high", np.nan),
                )
            )
    return rows


@register("consistency")
def run(ctx: AlignmentContext) -> AnalysisResult:
    """consistency.csv and consistency.png, on the natural trials."""
    data, cfg = ctx.inputs, ctx.config
    table = consistency(data.natural_trials, data.model_correct, n_boot=cfg.n_boot, seed=cfg.seed)
    return AnalysisResult(
        tables={"consistency": table},
        figures={"consistency": plot_consistency(table, synthetic=data.synthetic)},
        summary=summary_rows(table),
    )
