"""Difficulty prediction: does the guide model's ground-truth logit predict whether a person
answers a *natural* image correctly, and does it beat a non-robust ("vanilla") model's logit?

As in L-WISE `notebooks/make_figs.ipynb`: per-trial logistic regression of correctness on the
logit, 3-SD outliers removed, stratified k-fold CV AUC with a bootstrap CI
(`lwise.alignment.auc.difficulty_auc`).
"""

from __future__ import annotations

import logging

import pandas as pd

from lwise.alignment import auc, summary
from lwise.alignment.analysis import AlignmentContext, AnalysisResult, SummaryRow, register
from lwise.alignment.inputs import AlignmentDataError, per_trial
from lwise.alignment.plots import plot_difficulty_curve

__all__ = ["difficulty_prediction", "summary_rows"]

log = logging.getLogger(__name__)


def difficulty_prediction(
    trials: pd.DataFrame,
    logit: pd.Series,
    *,
    logit_column: str,
    folds: int,
    n_boot: int,
    seed: int,
    outliers_sd: float | None,
    vanilla: pd.Series | None = None,
    vanilla_column: str | None = None,
) -> pd.DataFrame:
    """How well each model's per-image logit predicts per-trial human correctness.

    `trials`: natural trials (`image`, `correct`); `logit`, `vanilla`: per-image scores indexed
    by image key. One row per model (`robust`, and `vanilla` plus `robust_minus_vanilla`, the
    paired CV-AUC difference, when `vanilla` is given), with `auc.difficulty_auc` (CI over
    `n_boot` bootstrap resamples of trials) and the Spearman correlation between per-image human
    accuracy and the logit (L-WISE: the logit predicts the proportion correct per image).
    """
    correct = trials["correct"].to_numpy(dtype=bool)
    per_image = trials.groupby("image")["correct"].mean()
    scores = {"robust": (logit_column, logit)}
    if vanilla is not None:
        scores["vanilla"] = (vanilla_column or logit_column, vanilla)
    rows, scores_of_trials = [], {}
    for model, (column, score) in scores.items():
        x = scores_of_trials[model] = per_trial(trials, score, f"{model} logit '{column}'")
        try:
            fit = auc.difficulty_auc(
                correct, x, folds=folds, n_boot=n_boot, seed=seed, outliers_sd=outliers_sd
            )
        except ValueError as err:
            raise AlignmentDataError(f"difficulty prediction from '{column}': {err}") from err
        rho, p = auc.spearman_accuracy(per_image.to_numpy(), score.loc[per_image.index])
        rows.append(
            {
                "model": model,
                "logit_column": column,
                "n_trials": fit["n_trials"],
                "n_outliers": fit["n_outliers"],
                "coef": fit["coef"],
                "auc": fit["auc"],
                "raw_auc": fit["raw_auc"],
                "cv_auc": fit["cv_auc"],
                "ci_low": fit["cv_auc_ci_low"],
                "ci_high": fit["cv_auc_ci_high"],
                "n_images": len(per_image),
                "spearman_rho": rho,
                "spearman_p": p,
            }
        )
    if vanilla is not None:
        diff = auc.compare_auc(
            correct,
            scores_of_trials["robust"],
            scores_of_trials["vanilla"],
            folds=folds,
            n_boot=n_boot,
            seed=seed,
            outliers_sd=outliers_sd,
        )
        rows.append(
            {
                "model": "robust_minus_vanilla",
                "logit_column": f"{logit_column} - {vanilla_column or logit_column}",
                "n_trials": diff["n_trials"],
                "n_outliers": diff["n_outliers"],
                "cv_auc": diff["difference"],
                "ci_low": diff["ci_low"],
                "ci_high": diff["ci_high"],
                "n_images": len(per_image),
            }
        )
    out = pd.DataFrame(rows)
    out["folds"], out["n_boot"] = folds, n_boot
    return out


def summary_rows(table: pd.DataFrame) -> list[SummaryRow]:
    """CV AUC (with CI), in-sample AUC and Spearman rho per model; the robust-minus-vanilla CV AUC
    difference (with CI)."""
    rows = []
    for _, r in table.iterrows():
        if r["model"] == "robust_minus_vanilla":
            rows.append(
                summary.row("cv_auc_difference", r["model"], r["cv_auc"], r["ci_low"], r["ci_high"])
            )
            continue
        rows.append(
            summary.row("difficulty_cv_auc", r["model"], r["cv_auc"], r["ci_low"], r["ci_high"])
        )
        rows.append(summary.row("difficulty_auc", r["model"], r["auc"]))
        rows.append(summary.row("difficulty_spearman_rho", r["model"], r["spearman_rho"]))
    return rows


@register("difficulty")
def run(ctx: AlignmentContext) -> AnalysisResult:
    """difficulty_prediction.csv and difficulty_curve.png, on the natural trials."""
    data, cfg = ctx.inputs, ctx.config
    table = difficulty_prediction(
        data.natural_trials,
        data.logits,
        logit_column=data.logit_column,
        vanilla=data.vanilla,
        vanilla_column=data.vanilla_column,
        folds=cfg.folds,
        n_boot=cfg.n_boot,
        seed=cfg.seed,
        outliers_sd=cfg.outliers_sd,
    )
    robust_auc = table.iloc[0]["cv_auc"]
    log.info("difficulty prediction: CV AUC %.3f", robust_auc)
    figure = plot_difficulty_curve(
        data.natural_trials,
        data.logits,
        logit_column=data.logit_column,
        cv_auc=robust_auc,
        synthetic=data.synthetic,
    )
    return AnalysisResult(
        tables={"difficulty_prediction": table},
        figures={"difficulty_curve": figure},
        summary=summary_rows(table),
    )
