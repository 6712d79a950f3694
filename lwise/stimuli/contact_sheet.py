"""The contact sheet of a dataset's stimuli, for the report: per class a few images chosen
across the difficulty range (easiest to hardest), each in every version side by side (natural,
then each enhanced set), an amplified difference between the natural image and the strongest
enhancement of each objective, and the guide model's ground-truth logit under every image.

The number of rows is capped, so a 1000-class dataset gives a sheet of a few classes (evenly
spread over the class list) rather than thousands of rows.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from lwise.core import keys
from lwise.core.atomic import atomic_path
from lwise.core.config import Section
from lwise.data import dirmap

__all__ = ["ContactSheetConfig", "choose_rows", "contact_sheet", "difference_sets"]

log = logging.getLogger(__name__)

# The scoring stage's default ground-truth-logit column (`scoring.gt_logit_column`).
DEFAULT_LOGIT_COLUMN = "robust_gt_logit"


@dataclass(frozen=True)
class ContactSheetConfig(Section):
    """The `report.contact_sheet` config section (meanings and defaults in the schema); the
    images per class are `enhance.contact_sheet_per_class`."""

    SECTION = "report.contact_sheet"

    max_rows: int
    amplify: float | None


def _order(natural: pd.DataFrame, enhanced: dict[str, pd.DataFrame]) -> tuple[pd.Series, str]:
    """What sorts a class's images from easiest to hardest, and its name: the scored
    `difficulty`, else minus the natural ground-truth logit an enhancement job measured, else
    the image path."""
    if "difficulty" in natural.columns and natural["difficulty"].notna().all():
        return natural["difficulty"].astype(float), "difficulty"
    for df in enhanced.values():
        if "gt_logit_natural" in df.columns:
            logit = natural["im_path"].map(df.set_index("im_path")["gt_logit_natural"])
            if logit.notna().all():
                return -logit.astype(float), "ground-truth logit"
    return pd.Series(np.arange(len(natural)), index=natural.index, dtype=float), "path"


def choose_rows(order: pd.Series, natural: pd.DataFrame, per_class: int, max_rows: int) -> list:
    """Row labels of `natural` for the sheet: per class, `per_class` images at evenly spaced
    ranks of `order` (easiest first); classes evenly spaced over the sorted class list when
    every class would take more than `max_rows` rows."""
    per_class = max(1, min(per_class, max_rows))
    classes = sorted(natural["class_num"].unique())
    shown = max(1, min(len(classes), max_rows // per_class))
    picks = np.unique(np.round(np.linspace(0, len(classes) - 1, shown)).astype(int))
    rows = []
    for c in (classes[i] for i in picks):
        ranked = order[natural["class_num"] == c].sort_values(kind="stable")
        ranks = np.unique(np.round(np.linspace(0, len(ranked) - 1, per_class)).astype(int))
        rows.extend(ranked.index[ranks])
    return rows


def difference_sets(names: list[str]) -> list[str]:
    """The enhanced set of largest epsilon of each objective (in the order given)."""
    best: dict[str, tuple[float, str]] = {}
    for name in names:
        try:
            objective, eps = keys.parse_set(name)
        except ValueError:
            objective, eps = name, 0.0
        if objective is not None and (objective not in best or eps > best[objective][0]):
            best[objective] = (eps, name)
    return [name for _, name in best.values()]


def _load(path: Path) -> np.ndarray | None:
    if not path.exists():
        return None
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"), dtype=np.float32) / 255


def contact_sheet(
    versions: dict[str, str | os.PathLike],
    out_png: str | os.PathLike,
    *,
    per_class: int,
    cfg: ContactSheetConfig | None = None,
    logit_column: str = DEFAULT_LOGIT_COLUMN,
) -> None:
    """A grid: rows are images (per class, easiest to hardest), columns the versions (the first
    is the natural set, each later one an enhanced set), then one amplified-difference column
    per objective. Under each image: the ground-truth logit (natural: the enhancement job's
    measurement on the saved natural file, else the scored `logit_column`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cfg = cfg or ContactSheetConfig.from_config()
    folders = {name: Path(folder) for name, folder in versions.items()}
    frames = {name: dirmap.read(folder / "dirmap.csv") for name, folder in folders.items()}
    natural_name = next(iter(frames))
    natural = frames[natural_name]
    enhanced = {k: v.set_index("im_path") for k, v in frames.items() if k != natural_name}
    order, order_name = _order(natural, {k: frames[k] for k in enhanced})
    rows = choose_rows(order, natural, per_class, cfg.max_rows)
    diffs = difference_sets(list(enhanced))
    columns = list(frames) + [f"diff:{name}" for name in diffs]

    images: dict[tuple[int, str], np.ndarray | None] = {}
    for r, label in enumerate(rows):
        key = natural.at[label, "im_path"]
        for name in frames:
            images[r, name] = _load(folders[name] / key)
    amplify = cfg.amplify
    if amplify is None:  # the largest difference shown fills the grey scale
        peak = max(
            (float(np.abs(images[r, d] - images[r, natural_name]).max()) for r in range(len(rows))
             for d in diffs if _same_shape(images[r, d], images[r, natural_name])),
            default=0.0,
        )  # fmt: skip
        amplify = 0.5 / peak if peak > 0 else 1.0

    fig, axes = plt.subplots(
        len(rows), len(columns), figsize=(1.55 * len(columns) + 0.6, 1.75 * len(rows) + 0.6),
        squeeze=False, layout="constrained",
    )  # fmt: skip
    for r, label in enumerate(rows):
        row = natural.loc[label]
        key = row["im_path"]
        for c, column in enumerate(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if column.startswith("diff:"):
                name = column.removeprefix("diff:")
                a, b = images[r, name], images[r, natural_name]
                if _same_shape(a, b):
                    ax.imshow(np.clip(0.5 + amplify * (a - b), 0, 1))
                    ax.set_xlabel(f"L2 {_value(enhanced[name], key, 'l2_distance')}", fontsize=7)
                title = f"({name} − natural)\n×{amplify:.3g}, grey = 0"
            else:
                if images[r, column] is not None:
                    ax.imshow(images[r, column])
                logit = _natural_logit(row, enhanced, key, logit_column)
                if column in enhanced:
                    logit = _value(enhanced[column], key, "gt_logit_enhanced")
                ax.set_xlabel(f"GT logit {logit}", fontsize=7)
                title = column
            if r == 0:
                ax.set_title(title, fontsize=8)
            if c == 0:
                extra = f"\n{order_name} {order[label]:.2f}" if order_name == "difficulty" else ""
                ax.set_ylabel(f"{row['class']}{extra}", fontsize=7)
    classes = natural["class_num"].nunique()
    shown = len({natural.at[label, "class_num"] for label in rows})
    fig.suptitle(
        f"{shown} of {classes} classes, up to {per_class} image(s) each, ordered by {order_name} "
        "(easiest first)",
        fontsize=9,
    )
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    log.info(
        "contact sheet: %d rows, %d columns, difference ×%.3g", len(rows), len(columns), amplify
    )


def _same_shape(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    return a is not None and b is not None and a.shape == b.shape


def _value(df: pd.DataFrame, key: str, column: str) -> str:
    if column not in df.columns or key not in df.index:
        return "n/a"
    value = df.at[key, column]
    return "n/a" if pd.isna(value) else f"{float(value):.2f}"


def _natural_logit(row: pd.Series, enhanced: dict[str, pd.DataFrame], key: str, column: str):
    for df in enhanced.values():
        if "gt_logit_natural" in df.columns and key in df.index:
            return _value(df, key, "gt_logit_natural")
    return "n/a" if column not in row.index or pd.isna(row[column]) else f"{row[column]:.2f}"
