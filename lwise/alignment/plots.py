"""Figures of the alignment analyses; titles say when the observers are synthetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from lwise.alignment import metrics
from lwise.alignment.inputs import per_trial
from lwise.core.atomic import atomic_path

__all__ = [
    "SYNTHETIC_NOTE",
    "plot_consistency",
    "plot_difficulty_curve",
    "plot_enhancement_effect",
    "save",
]

SYNTHETIC_NOTE = "(synthetic observers)"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _title(text: str, synthetic: bool) -> str:
    return f"{text} {SYNTHETIC_NOTE}" if synthetic else text


def plot_difficulty_curve(
    trials: pd.DataFrame,
    logit: pd.Series,
    *,
    logit_column: str,
    cv_auc: float | None = None,
    n_bins: int = 10,
    synthetic: bool = False,
):
    """Human accuracy (Wilson 95 % CI) in quantile bins of the logit, with the logistic fit."""
    from sklearn.linear_model import LogisticRegression

    plt = _pyplot()
    x = per_trial(trials, logit, logit_column)
    y = trials["correct"].to_numpy(dtype=bool)
    bins = pd.qcut(x, q=min(n_bins, len(np.unique(x))), duplicates="drop")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    centres, acc, err = [], [], [[], []]
    for _, idx in pd.Series(np.arange(len(x))).groupby(bins, observed=True):
        ci = metrics.accuracy_ci(y[idx.to_numpy()])
        centres.append(x[idx.to_numpy()].mean())
        acc.append(ci["accuracy"])
        err[0].append(max(0.0, ci["accuracy"] - ci["ci_low"]))  # rounding at 0 % or 100 %
        err[1].append(max(0.0, ci["ci_high"] - ci["accuracy"]))
    ax.errorbar(centres, acc, yerr=err, fmt="o", capsize=3, label="human accuracy (binned)")
    if len(set(y)) == 2:
        # The model auc.difficulty_auc fits (logistic on the standardised logit), for display.
        mean, sd = x.mean(), x.std() or 1.0
        fit = LogisticRegression().fit(((x - mean) / sd)[:, None], y)
        grid = np.linspace(x.min(), x.max(), 200)
        ax.plot(grid, fit.predict_proba(((grid - mean) / sd)[:, None])[:, 1], label="logistic fit")
    ax.set_xlabel(f"{logit_column} (guide model)")
    ax.set_ylabel("proportion correct")
    ax.set_ylim(0, 1.02)
    label = f", CV AUC {cv_auc:.3f}" if cv_auc is not None else ""
    ax.set_title(_title(f"Natural trials (n={len(y)}){label}", synthetic), fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def plot_enhancement_effect(table: pd.DataFrame, *, synthetic: bool = False):
    """Accuracy ± Wilson 95 % CI per stimulus set, in epsilon order, with mean achieved L2."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4.0, 1.1 * len(table) + 1.5), 4))
    pos = np.arange(len(table))
    err = np.clip([table["accuracy"] - table["ci_low"], table["ci_high"] - table["accuracy"]], 0, 1)
    ax.errorbar(pos, table["accuracy"], yerr=err, fmt="o-", capsize=4)
    labels = [
        f"{r.condition}\nL2 {r.mean_l2_distance:.2f}"
        if np.isfinite(r.mean_l2_distance)
        else r.condition
        for r in table.itertuples()
    ]
    ax.set_xticks(pos, labels, fontsize=8)
    ax.set_ylabel("human accuracy")
    ax.set_ylim(0, 1.02)
    ax.set_title(_title("Accuracy per stimulus set (95 % Wilson CI)", synthetic), fontsize=9)
    fig.tight_layout()
    return fig


def plot_consistency(table: pd.DataFrame, *, synthetic: bool = False):
    """Per-participant human accuracy, observed and error consistency with the guide model."""
    plt = _pyplot()
    per = table[table["level"] == "participant"]
    mean = table[table["level"] == "mean_over_participants"].iloc[0]
    panels = [
        ("human_accuracy", "human accuracy"),
        ("observed_consistency", "observed consistency"),
        ("error_consistency", "error consistency (kappa)"),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.6))
    jitter = np.random.default_rng(0).uniform(-0.15, 0.15, len(per))
    for ax, (column, label) in zip(axes, panels, strict=True):
        ax.scatter(jitter, per[column], s=12, alpha=0.6)
        low, high = mean[f"{column}_ci_low"], mean[f"{column}_ci_high"]
        yerr = np.clip([[mean[column] - low], [high - mean[column]]], 0, None)  # NaN: no bar
        ax.errorbar([0.4], [mean[column]], yerr=yerr, fmt="D", color="k", capsize=4)
        if column == "human_accuracy":
            ax.axhline(mean["model_accuracy"], color="C3", ls="--", label="model")
            ax.legend(fontsize=7)
        if column == "error_consistency":
            ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks([])
        ax.set_xlim(-0.5, 0.7)
        ax.set_title(label, fontsize=9)
    fig.suptitle(_title("Guide model vs each participant, natural images", synthetic), fontsize=10)
    fig.tight_layout()
    return fig


def save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    _pyplot().close(fig)
