"""The attention stage's overlay grid: image, human mask, CAM before and CAM after fine-tuning."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from lwise.core.atomic import atomic_path

__all__ = ["overlay_rows", "plot_overlays"]


def overlay_rows(
    df: pd.DataFrame, masks: Mapping[int, torch.Tensor], rows: Sequence[int], n: int
) -> list[int]:
    """Up to `n` of `rows` that have masks, taking one class after another."""
    by_class: dict[int, list[int]] = {}
    for row in rows:
        if row in masks:
            by_class.setdefault(int(df.at[row, "class_num"]), []).append(row)
    chosen: list[int] = []
    while len(chosen) < n and any(by_class.values()):
        for cls in sorted(by_class):
            if by_class[cls] and len(chosen) < n:
                chosen.append(by_class[cls].pop(0))
    return chosen


def plot_overlays(
    rows: Sequence[int],
    images: Mapping[int, np.ndarray],
    masks: Mapping[int, torch.Tensor],
    cams_before: Mapping[int, torch.Tensor],
    cams_after: Mapping[int, torch.Tensor],
    titles: Mapping[int, tuple[str, float, float]],
    path: str | os.PathLike,
    synthetic: bool,
) -> None:
    """One row per image: the image, the mask over it (titled "synthetic mask" when it is), and
    the CAMs before and after over it, titled with their IoU. `titles[row]` is (class name,
    IoU before, IoU after)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = max(len(rows), 1)
    fig, axes = plt.subplots(n, 4, figsize=(8, 2.1 * n), squeeze=False)
    mask_title = "synthetic mask" if synthetic else "human mask"
    for r, row in enumerate(rows):
        name, iou_before, iou_after = titles[row]
        panels = [
            (None, name),
            (masks[row].float().numpy(), mask_title),
            (cams_before[row].numpy(), f"CAM before: IoU {iou_before:.2f}"),
            (cams_after[row].numpy(), f"CAM after: IoU {iou_after:.2f}"),
        ]
        for c, (overlay, title) in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(images[row])
            if c == 1:  # the mask in red, the rest of the image as it is
                ax.imshow(np.ma.masked_where(overlay == 0, overlay), cmap="autumn", alpha=0.6)
            elif overlay is not None:
                ax.imshow(overlay, cmap="jet", alpha=0.5, vmin=0, vmax=1)
            ax.set_title(title, fontsize=8)
            ax.axis("off")
    if not rows:
        axes[0, 0].text(0.5, 0.5, "no evaluation image has a mask", ha="center")
        for ax in axes[0]:
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
