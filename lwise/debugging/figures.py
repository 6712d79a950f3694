"""Data debugging figures: the grid of failures and the comparison of methods."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from lwise.core.atomic import atomic_path
from lwise.data.imaging import to_rgb

__all__ = ["comparison_plot", "failure_grid"]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)


def failure_grid(
    wrong: pd.DataFrame, root: str | os.PathLike, out: str | os.PathLike, *, limit: int, title: str
) -> None:
    """Up to `limit` misclassified images (those in failure slices first), each titled
    "true → predicted"; `im_path` is relative to `root`."""
    plt = _pyplot()
    ordered = wrong.assign(_in=wrong["failure_slices"].astype(str).str.len() == 0)
    ordered = ordered.sort_values(["_in", "class_num"], kind="stable").head(limit)
    n = len(ordered)
    cols = int(min(8, max(1, n)))
    rows = int(max(1, -(-n // cols)))
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.8 * rows + 0.4), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (_, row) in zip(axes.flat, ordered.iterrows(), strict=False):
        with Image.open(Path(root) / row["im_path"]) as img:
            ax.imshow(np.asarray(to_rgb(img)))
        ax.set_title(f"{row['class']} → {row['predicted_class']}", fontsize=8)
    if n == 0:
        axes.flat[0].text(0.5, 0.5, "no misclassified images", ha="center", va="center")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)


def _bars(ax, runs: pd.DataFrame, before: pd.DataFrame, scope: str, methods: list[str]) -> None:
    """Grouped bars: one group per name of `scope`, one bar per method (mean ± sd over seeds,
    seeds as dots), the model before fine-tuning as a black tick."""
    part = runs[runs["scope"] == scope]
    names = list(dict.fromkeys(part["name"]))
    width = 0.8 / max(1, len(methods))
    cmap = _pyplot().get_cmap("tab10")
    for j, method in enumerate(methods):
        sub = part[part["method"] == method].groupby("name", sort=False)["accuracy"]
        mean, sd = sub.mean().reindex(names), sub.std().reindex(names).fillna(0)
        x = np.arange(len(names)) + (j - (len(methods) - 1) / 2) * width
        ax.bar(x, mean, width, yerr=sd, color=cmap(j % 10), label=method, capsize=2)
        for i, name in enumerate(names):
            values = part[(part["method"] == method) & (part["name"] == name)]["accuracy"]
            ax.plot([x[i]] * len(values), values, "k.", ms=3)
    ref = before[before["scope"] == scope].set_index("name")["accuracy"].reindex(names)
    ax.plot(np.arange(len(names)), ref, "k_", ms=18, mew=2, label="before")
    ax.set_xticks(np.arange(len(names)), [_short(n) for n in names], fontsize=7, rotation=20)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("accuracy")


def _short(name: str) -> str:
    return name if len(name) <= 28 else name[:26] + "…"


def comparison_plot(runs: pd.DataFrame, before: pd.DataFrame, out, *, title: str) -> None:
    """Accuracy overall and on the images misclassified before, on the failure slices, and per
    class: mean ± sd over seeds per method."""
    plt = _pyplot()
    methods = list(dict.fromkeys(runs["method"]))
    fig, axes = plt.subplots(3, 1, figsize=(max(8, 2 * len(methods) + 2), 10))
    overall = pd.concat(
        [runs[runs["scope"].isin(["overall", "model_errors"])]], ignore_index=True
    ).assign(scope="top")
    top_before = before[before["scope"].isin(["overall", "model_errors"])].assign(scope="top")
    _bars(axes[0], overall, top_before, "top", methods)
    axes[0].set_title("overall, and on the images misclassified before fine-tuning", fontsize=9)
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if (runs["scope"] == "failure_slice").any():
        _bars(axes[1], runs, before, "failure_slice", methods)
        axes[1].set_title("failure slices (found on the slice split)", fontsize=9)
    else:
        axes[1].axis("off")
        axes[1].text(0.5, 0.5, "no failure slices", ha="center", va="center")
    _bars(axes[2], runs, before, "class", methods)
    axes[2].set_title("per class", fontsize=9)
    fig.suptitle(f"{title}: mean ± sd over seeds (dots: seeds)", fontsize=10)
    fig.tight_layout()
    _save(fig, out)
    plt.close(fig)
