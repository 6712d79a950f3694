"""The report's figures: difficulty histograms (overall and per class) and training curves."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from lwise.core.atomic import atomic_path
from lwise.core.config import Section
from lwise.data import dirmap

__all__ = ["ReportConfig", "difficulty_histogram", "training_curves"]


@dataclass(frozen=True)
class ReportConfig(Section):
    """The `report` config section (meanings and defaults in the schema); its `contact_sheet`
    subsection is `lwise.stimuli.contact_sheet.ContactSheetConfig`."""

    SECTION = "report"

    histogram_bins: int
    max_class_panels: int


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | os.PathLike, dpi: int = 100) -> None:
    plt = _pyplot()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)


def difficulty_histogram(
    dirmap_csv: str | os.PathLike, out_png: str | os.PathLike, *, cfg: ReportConfig
) -> None:
    """Histogram of the `difficulty` column of a scored dirmap over all images, then one small
    histogram per class (up to `cfg.max_class_panels` classes; with more, one box per class,
    sorted by median difficulty, so a 1000-class dataset still gives one readable figure)."""
    df = dirmap.read(dirmap_csv, check_files=False)  # the scores only, not the images
    if "difficulty" not in df.columns:
        raise ValueError(f"{dirmap_csv}: no 'difficulty' column (run score_difficulty first)")
    values = df["difficulty"].astype(float)
    if values.isna().any():
        raise ValueError(f"{dirmap_csv}: 'difficulty' is empty on {int(values.isna().sum())} rows")
    plt = _pyplot()
    bins = np.linspace(min(0.0, values.min()), max(1.0, values.max()), cfg.histogram_bins + 1)
    classes = sorted(df["class"].astype(str).unique())
    per_class = len(classes) <= cfg.max_class_panels
    cols = min(5, len(classes)) if per_class else 1
    class_rows = math.ceil(len(classes) / cols) if per_class else 1
    box_height = 0.5 + 0.18 * len(classes)
    height = 2.8 + (1.7 * class_rows if per_class else box_height)
    fig = plt.figure(figsize=(11, height), layout="constrained")
    ratios = [2.8] + ([1.7] * class_rows if per_class else [box_height])
    grid = fig.add_gridspec(1 + class_rows, cols, height_ratios=ratios)
    ax = fig.add_subplot(grid[0, :])
    splits = sorted(df["split"].unique())
    ax.hist(
        [df.loc[df["split"] == s, "difficulty"] for s in splits], bins=bins, stacked=True,
        label=[f"{s} ({int((df['split'] == s).sum())})" for s in splits],
    )  # fmt: skip
    ax.set_title(f"difficulty of all {len(df)} images")
    ax.set_xlabel("difficulty (1 = lowest ground-truth logit)")
    ax.set_ylabel("images")
    ax.legend(fontsize=8, title="split (stacked)", title_fontsize=8)
    by_class = {c: df.loc[df["class"].astype(str) == c, "difficulty"] for c in classes}
    if per_class:
        for i, c in enumerate(classes):
            sub = fig.add_subplot(grid[1 + i // cols, i % cols])
            sub.hist(by_class[c], bins=bins, color="tab:gray")
            sub.set_title(
                f"{c} (n={len(by_class[c])}, median {by_class[c].median():.2f})", fontsize=8
            )
            sub.tick_params(labelsize=7)
    else:
        order = sorted(classes, key=lambda c: by_class[c].median())
        sub = fig.add_subplot(grid[1, 0])
        sub.boxplot(
            [by_class[c] for c in order], orientation="horizontal", showfliers=False, widths=0.6
        )
        sub.set_yticks(range(1, len(order) + 1), order, fontsize=7 if len(order) <= 60 else 5)
        sub.set_xlabel("difficulty")
        sub.set_title(f"per class, {len(order)} classes sorted by median (boxes: quartiles)")
    _save(fig, out_png)


def training_curves(
    metrics_csv: str | os.PathLike | None,
    out_png: str | os.PathLike,
    *,
    checkpoint: str | None = None,
) -> None:
    """Loss, accuracy (training, clean and adversarial validation) and learning rate per epoch
    from `lwise.guide.train`'s metrics table. Without one (a ready checkpoint was configured,
    so nothing was trained here) the figure says so instead."""
    plt = _pyplot()
    if metrics_csv is None:
        fig, ax = plt.subplots(figsize=(8, 1.6))
        ax.axis("off")
        where = f" ({checkpoint})" if checkpoint else ""
        ax.text(0.5, 0.5, f"No training curves: the guide model is a ready checkpoint{where},\n"
                "not trained by this workflow.", ha="center", va="center", fontsize=11)  # fmt: skip
        _save(fig, out_png)
        return
    m = pd.read_csv(metrics_csv)
    missing = {"epoch", "train_loss", "train_acc"} - set(m.columns)
    if missing:
        raise ValueError(f"{metrics_csv}: no column(s) {sorted(missing)} (lwise.guide.train)")
    if m.empty:
        raise ValueError(f"{metrics_csv}: no epochs")
    adversarial = "val_adv_acc" in m.columns
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), layout="constrained")
    _curve(
        axes[0], m, "train_loss", "training" + (" (adversarial examples)" if adversarial else "")
    )
    _curve(axes[0], m, "val_loss", "validation, clean")
    axes[0].set_title("loss (cross-entropy)")
    _curve(axes[1], m, "train_acc", "training" + (" (adversarial examples)" if adversarial else ""))
    _curve(axes[1], m, "val_clean_acc", "validation, clean")
    _curve(axes[1], m, "val_adv_acc", "validation, adversarial")
    axes[1].set_title("top-1 accuracy")
    axes[1].set_ylim(-0.02, 1.02)
    _curve(axes[2], m, "lr", "learning rate")
    axes[2].set_title("learning rate")
    from matplotlib.ticker import MaxNLocator

    for ax in axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(m["epoch"].min() - 0.5, m["epoch"].max() + 0.5)
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        ax.legend(fontsize=8)
    fig.suptitle(f"guide model training, {len(m)} epoch(s)", fontsize=10)
    _save(fig, out_png)


def _curve(ax, m: pd.DataFrame, column: str, label: str) -> None:
    """One metric per epoch; validation runs every few epochs, so empty epochs are skipped."""
    if column not in m.columns:
        return
    part = m[["epoch", column]].dropna()
    if len(part):
        ax.plot(part["epoch"], part[column], marker="o", markersize=3, label=label)
