"""Data debugging: where the model fails (signals, failure slices, the grid of failures)."""

from __future__ import annotations

import logging
import os

from lwise.core.atomic import write_csv
from lwise.debugging import figures, signals, slices
from lwise.debugging.settings import DebuggingConfig

__all__ = ["find"]

log = logging.getLogger(__name__)


def find(
    base_csv: str | os.PathLike,
    pool_csv: str | os.PathLike,
    model_path: str | os.PathLike,
    *,
    out_signals_pool: str | os.PathLike,
    out_signals_eval: str | os.PathLike,
    out_embeddings: str | os.PathLike,
    out_slices: str | os.PathLike,
    out_images: str | os.PathLike,
    out_grid: str | os.PathLike,
    cfg: DebuggingConfig,
    trusted: bool,
    workers: int = 0,
):
    """The model's signals on the evaluation rows and the pool, then the slices of the slice
    split with their errors (the worst flagged `failure`), every misclassified image of it, and a
    grid of them. Returns the slice table."""
    scored, _ = signals.compute(
        base_csv, pool_csv, model_path, out_signals_pool, out_signals_eval, out_embeddings, cfg,
        trusted=trusted, workers=workers,
    )  # fmt: skip
    rows = scored[scored["split"] == cfg.slice_split]
    table = slices.find_slices(
        rows, list(cfg.slice_columns), top=cfg.failure_slices, min_errors=cfg.min_slice_errors
    )
    names = dict(zip(scored["class_num"], scored["class"].astype(str), strict=False))
    wrong = slices.failure_images(rows, table, names)
    write_csv(table, out_slices)
    write_csv(wrong.assign(im_path=_from(wrong, out_signals_eval, out_images)), out_images)
    figures.failure_grid(
        wrong, os.path.dirname(os.path.abspath(out_signals_eval)), out_grid,
        limit=cfg.grid_images, title=f"misclassified {cfg.slice_split} images (true → predicted)",
    )  # fmt: skip
    failing = table.loc[table["failure"], ["slice", "errors", "n"]].to_dict("records")
    log.info("%d misclassified %s images; failure slices: %s", len(wrong), cfg.slice_split, failing)
    return table


def _from(df, csv, out):
    """`im_path` of rows read from `csv`, relative to the folder of `out`."""
    from lwise.data.dirmap import relative_to

    folder = os.path.dirname(os.path.abspath(csv))
    return relative_to(df["im_path"].map(lambda p: os.path.join(folder, p)), os.path.dirname(out))
