"""The per-epsilon stimulus summary: for each image set (natural, then every objective and
epsilon), the achieved L2 distance and ground-truth-logit gain (from the set's dirmap, as the
enhancement job measured them on the saved 8-bit files) and the guide model's accuracy on the
set's own files, scored here.

An enhanced set's dirmap keeps the difficulty dirmap's `correct` column, which is the accuracy on
the natural image; the accuracy on the enhanced images needs the model run on them, which this
module does (a GPU job in the workflow).
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader

from lwise.core import keys
from lwise.core.atomic import write_csv
from lwise.core.config import Section
from lwise.core.logs import progress
from lwise.data import dirmap
from lwise.data.loading import DirmapImages, eval_transform
from lwise.guide.load import Guide, load_guide
from lwise.report.html import Table, page, write_page

__all__ = [
    "SPREAD_COLUMNS",
    "SummaryConfig",
    "set_accuracy",
    "stimulus_summary",
    "summary_page",
    "wilson",
]

log = logging.getLogger(__name__)

# Per-image values an enhanced set's dirmap records (lwise.stimuli.enhance).
SPREAD_COLUMNS = ("l2_distance", "logit_gain")
Z95 = 1.959963984540054  # standard normal 97.5% quantile


@dataclass(frozen=True)
class SummaryConfig(Section):
    """How the sets are scored: the keys of the `scoring` config section that decide a
    prediction (defaults in its schema), so accuracy on a set means what it means for the
    difficulty scores."""

    SECTION = "scoring"

    label_column: str
    present_classes_only: bool
    fast_dtype: str
    batch_size: int


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of a proportion (Wilson, JASA 1927); (nan, nan) when n is 0."""
    if n == 0:
        return math.nan, math.nan
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def set_accuracy(
    guide: Guide,
    set_dir: str | os.PathLike,
    df: pd.DataFrame,
    *,
    class_ids: list[int] | None,
    batch_size: int,
    workers: int,
) -> tuple[np.ndarray, np.ndarray]:
    """The guide's ground-truth logit and whether its top class is right, for every image of
    one set (its files, as saved). `class_ids` restricts the decision to those classes (the
    `scoring.present_classes_only` rule); None decides over all the model's classes."""
    data = DirmapImages(df, set_dir, eval_transform(guide.input_size), guide.label_column)
    loader = DataLoader(
        data, batch_size=batch_size, num_workers=workers, pin_memory=guide.device.type == "cuda"
    )
    ids = torch.as_tensor(class_ids) if class_ids is not None else None
    gt, correct = [], []
    with torch.no_grad(), guide.autocast():
        for x, y, _ in progress(loader, desc=Path(set_dir).name):
            x = x.to(guide.device, non_blocking=True)
            if guide.fast:
                x = x.contiguous(memory_format=torch.channels_last)
            logits = guide.net(x).float().cpu()
            gt.append(logits.gather(1, y[:, None])[:, 0])
            if ids is None:
                predicted = logits.argmax(1)
            else:
                predicted = ids[logits[:, ids].argmax(1)]
            correct.append(predicted == y)
    return torch.cat(gt).numpy(), torch.cat(correct).numpy()


def _spread(values: pd.Series, name: str) -> dict[str, float]:
    v = values.astype(float)
    return {
        f"{name}_mean": v.mean(),
        f"{name}_sd": v.std(ddof=1) if len(v) > 1 else math.nan,
        f"{name}_p05": v.quantile(0.05),
        f"{name}_p95": v.quantile(0.95),
    }


def _set_row(name: str, df: pd.DataFrame, csv: Path, gt: np.ndarray, ok: np.ndarray) -> dict:
    objective, eps = keys.parse_set(name)
    row: dict = {"set": name, "objective": objective or "", "eps": eps, "n": len(df)}
    for column in SPREAD_COLUMNS:
        if objective is None:
            values = pd.Series(0.0, index=df.index)  # natural: no perturbation by definition
        elif column in df.columns:
            values = df[column]
        else:
            raise ValueError(f"{csv}: enhanced set {name!r} has no {column!r} column")
        row |= _spread(values, column)
    row |= _spread(pd.Series(gt), "gt_logit")
    low, high = wilson(int(ok.sum()), len(ok))
    row |= {"accuracy": float(ok.mean()), "accuracy_low": low, "accuracy_high": high}
    for split in sorted(df["split"].unique()):
        row[f"accuracy_{split}"] = float(ok[(df["split"] == split).to_numpy()].mean())
    return row


def stimulus_summary(
    sets: Mapping[str, str | os.PathLike],
    model_path: str | os.PathLike,
    out_csv: str | os.PathLike,
    out_html: str | os.PathLike,
    *,
    cfg: SummaryConfig,
    trusted: bool,
    workers: int = 0,
    dataset: str = "",
) -> pd.DataFrame:
    """One row per set (in the order given: natural first) with the mean, standard deviation
    and 5th/95th percentiles of `l2_distance`, `logit_gain` and the ground-truth logit, and the
    accuracy (Wilson 95% interval; per split) of the guide on the set's files. Writes the CSV
    and the report's HTML table."""
    if not sets:
        raise ValueError("stimulus_summary: no image sets given")
    frames = {name: dirmap.read(Path(d) / "dirmap.csv") for name, d in sets.items()}
    first = next(iter(frames.values()))
    guide = load_guide(
        model_path, trusted=trusted, fast=None, fast_dtype=cfg.fast_dtype, dirmap=first,
        label_column=cfg.label_column,
    )  # fmt: skip
    guide.model.requires_grad_(False)
    class_ids = sorted(int(c) for c in first[guide.label_column].unique())
    rows = []
    for name, folder in sets.items():
        df, csv = frames[name], Path(folder) / "dirmap.csv"
        gt, ok = set_accuracy(
            guide, folder, df, class_ids=class_ids if cfg.present_classes_only else None,
            batch_size=cfg.batch_size, workers=workers,
        )  # fmt: skip
        if "gt_logit_enhanced" in df.columns:  # the enhancement job's own measurement
            gap = np.abs(gt - df["gt_logit_enhanced"].to_numpy(dtype=float)).max()
            log.info("%s: largest |GT logit - enhancement's record| %.4g", name, gap)
        rows.append(_set_row(name, df, csv, gt, ok))
        log.info("%s: accuracy %.4f over %d images", name, ok.mean(), len(ok))
    out = pd.DataFrame(rows)
    write_csv(out, out_csv)
    write_page(out_html, summary_page(out, dataset=dataset, model_path=str(model_path)))
    return out


def _spread_cell(row: pd.Series, name: str) -> str:
    """ "mean ± sd" over "5th – 95th percentile"; a dash for the natural set's zeros."""
    if name in SPREAD_COLUMNS and not row["objective"]:
        return "–"
    sd = row[f"{name}_sd"]
    text = f"{row[f'{name}_mean']:.3f}" + ("" if pd.isna(sd) else f" ± {sd:.3f}")
    return f"{text}\n{row[f'{name}_p05']:.3f} – {row[f'{name}_p95']:.3f}"


def summary_page(summary: pd.DataFrame, *, dataset: str = "", model_path: str = "") -> str:
    """The report's table of a stimulus summary (`stimulus_summary`'s CSV)."""
    splits = [c for c in summary.columns if c.startswith("accuracy_") and c not in
              ("accuracy_low", "accuracy_high")]  # fmt: skip
    rows = [r for _, r in summary.fillna({"objective": ""}).iterrows()]
    shown = pd.DataFrame(
        {
            "set": summary["set"],
            "ε (L2)": summary["eps"].map(keys.format_eps),
            "images": summary["n"],
            "achieved L2": [_spread_cell(r, "l2_distance") for r in rows],
            "logit gain": [_spread_cell(r, "logit_gain") for r in rows],
            "GT logit": [_spread_cell(r, "gt_logit") for r in rows],
            "accuracy [95% CI]": [
                f"{r['accuracy']:.3f}\n[{r['accuracy_low']:.3f}, {r['accuracy_high']:.3f}]"
                for r in rows
            ],
        }
    )
    for column in splits:
        shown[column.replace("accuracy_", "accuracy, ")] = summary[column].map(lambda v: f"{v:.3f}")
    numeric = [c for c in shown.columns if c != "set"]
    note = (
        "Each cell: mean ± standard deviation over images, and below it the 5th – 95th "
        "percentiles. Achieved L2: distance between the saved 8-bit natural and enhanced images "
        "(pixel values in [0, 1]); logit gain: the guide model's ground-truth logit on the "
        "enhanced file minus that on the natural file, as the enhancement job measured them. "
        "GT logit and accuracy: the guide model run here on each set's own files (top-1, Wilson "
        "95% interval; then per split)."
    )
    title = "Stimulus sets" + (f" of {dataset}" if dataset else "")
    intro = f"Guide model: {model_path}" if model_path else None
    return page(title, [Table(None, shown, note, numeric)], intro=intro)
