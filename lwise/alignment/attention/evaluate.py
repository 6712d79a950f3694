"""Evaluation of attention alignment: CAM IoU against human masks before and after attention
fine-tuning, overlays, and the reasonability matrix (GRADIA, Gao et al. CSCW 2022)."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from PIL import Image

from lwise.alignment.attention.masks import (
    ImageIndex,
    MaskError,
    read_assessment,
)
from lwise.alignment.attention.plots import overlay_rows, plot_overlays
from lwise.alignment.attention.run import (
    ROLES,
    AttentionConfig,
    _Stage,
)
from lwise.core.atomic import write_csv
from lwise.core.threads import limit_threads
from lwise.data.loading import eval_transform
from lwise.guide.load import load_guide

log = logging.getLogger(__name__)

__all__ = ["evaluate", "reasonability_matrix"]


def _read_roles(path, df) -> pd.Series:
    table = pd.read_csv(path, dtype={"im_path": str, "role": str})
    missing = {"im_path", "role"} - set(table.columns)
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    bad = ~table["role"].isin(ROLES)
    if bad.any():
        raise ValueError(f"{path}: unknown role {table['role'][bad].iloc[0]!r} (valid {ROLES})")
    by_path = dict(zip(table["im_path"], table["role"], strict=True))
    unknown = [p for p in df["im_path"] if p not in by_path]
    if unknown:
        raise ValueError(f"{path}: no role for image {unknown[0]!r} of the dirmap")
    return df["im_path"].map(by_path)


@limit_threads
def evaluate(
    dirmap_csv: str | os.PathLike,
    phase1_path: str | os.PathLike,
    model_path: str | os.PathLike,
    roles_csv: str | os.PathLike,
    masks: str | os.PathLike,
    out_metrics: str | os.PathLike,
    out_iou: str | os.PathLike,
    out_overlays: str | os.PathLike,
    *,
    updates: Sequence[str | os.PathLike] = (),
    removals: Sequence[str | os.PathLike] = (),
    settings: Mapping | None = None,
    synthetic: bool = False,
    threads: int = 2,
) -> pd.DataFrame:
    """Accuracy and mean CAM IoU before (phase 1) and after (phase 2) on the evaluation images,
    per-image values, and an overlay grid (image, human mask, CAM before, CAM after)."""
    cfg = AttentionConfig.from_config(settings)
    stage = _Stage(dirmap_csv, phase1_path, masks, updates, removals, cfg, False, threads)
    roles = _read_roles(roles_csv, stage.df)
    rows = list(stage.df.index[roles == "evaluation"])
    after = load_guide(model_path, trusted=False, fast=False).model
    shown = overlay_rows(stage.df, stage.masks, rows, cfg.overlay_images)
    before_t, cams_before = stage.score(stage.model, rows, keep=shown)
    after_t, cams_after = stage.score(after, rows, keep=shown)
    df = stage.df.loc[rows]
    per_image = pd.DataFrame(
        {
            "im_path": df["im_path"].to_numpy(),
            "split": df["split"].to_numpy(),
            "class": df["class"].to_numpy(),
            "label": df[stage.label].to_numpy(),
            "has_mask": [r in stage.masks for r in rows],
            "pred_before": before_t["pred"],
            "pred_after": after_t["pred"],
            "correct_before": before_t["correct"],
            "correct_after": after_t["correct"],
            "iou_before": before_t["iou"],
            "iou_after": after_t["iou"],
        }
    )
    metrics = pd.DataFrame(
        [
            {
                "model": name,
                "images": len(t),
                "accuracy": t["correct"].mean(),
                "masks": int(t["iou"].notna().sum()),
                "mean_iou": t["iou"].mean(),
                "cam_threshold": cfg.cam_threshold,
                "cam_class": cfg.cam_class,
                "layer": stage.layer_name,
                "masks_source": "synthetic" if synthetic else "human",
            }
            for name, t in (("before", before_t), ("after", after_t))
        ]
    )
    write_csv(per_image, out_iou)
    write_csv(metrics, out_metrics)
    images = {row: _image(stage, row) for row in shown}
    titles = {
        row: (
            str(stage.df.at[row, "class"]),
            *per_image.loc[rows.index(row), ["iou_before", "iou_after"]],
        )
        for row in shown
    }
    plot_overlays(
        shown, images, stage.masks, cams_before, cams_after, titles, out_overlays, synthetic
    )
    log.info("attention IoU before %.4f, after %.4f", *metrics["mean_iou"])
    return metrics


def _image(stage: _Stage, row: int) -> np.ndarray:
    """The image of `row` as the model sees it, [H, W, 3] in [0, 1]."""
    with Image.open(stage.root / stage.df.at[row, "im_path"]) as img:
        return eval_transform(stage.size)(img.convert("RGB")).permute(1, 2, 0).numpy()


def reasonability_matrix(
    iou_csv: str | os.PathLike, assessment: str | os.PathLike, out_csv: str | os.PathLike
) -> pd.DataFrame:
    """GRADIA's reasonability matrix of the fine-tuned model on test (GRADIA.py `model_test`,
    `output_reasonbality`): rows accurate/inaccurate (its predictions, from `iou_csv`), columns
    reasonable/unreasonable (the human assessment of its attention)."""
    table = pd.read_csv(iou_csv, dtype={"im_path": str})
    index = ImageIndex(table)
    judged = read_assessment(assessment, index)
    if not judged:
        raise MaskError(f"{assessment}: no assessed image")
    counts = pd.DataFrame(
        0, index=["accurate", "inaccurate"], columns=["reasonable", "unreasonable"]
    )
    for row, label in judged.items():
        accurate = "accurate" if bool(table.at[row, "correct_after"]) else "inaccurate"
        counts.loc[accurate, label] += 1
    out = counts.rename_axis("prediction").reset_index()
    write_csv(out, out_csv)
    return out
