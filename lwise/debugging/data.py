"""Data debugging: the training and evaluation rows, and the pool of candidate debug images.

The pool is a dirmap of extra labelled images (`debugging.pool.dirmaps`), or, without one, a
class-stratified part of one split held out so the model debugged never saw it. Generated images
(`debugging.generated`, G-* methods) join the pool as their own sources. Every pool row gets
split "train" (a selected image is a training image) and a `source` column: "pool" or its G-*
name; `orig_split` keeps a dirmap's own split.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pandas as pd

from lwise.data import dirmap
from lwise.data.definers import IMAGE_EXTENSIONS
from lwise.debugging.settings import DebuggingConfig

__all__ = ["POOL", "hold_out", "prepare", "read_generated", "read_pool"]

log = logging.getLogger(__name__)

POOL = "pool"  # the `source` of pool images; G-* sets use their own names


def _absolute(df: pd.DataFrame, csv: str | os.PathLike) -> pd.DataFrame:
    out = df.copy()
    out["im_path"] = [os.path.abspath(Path(csv).parent / p) for p in df["im_path"]]
    return out


def _with_dataset_classes(df: pd.DataFrame, classes: dict[str, int], where: str) -> pd.DataFrame:
    """`class_num` set from the dataset's numbering of `class`; unknown classes are an error
    naming `where` and the CSV lines."""
    unknown = ~df["class"].astype(str).isin(list(classes))
    if unknown.any():
        names = sorted(set(df.loc[unknown, "class"].astype(str)))[:5]
        lines = dirmap.csv_lines(df, unknown)
        raise ValueError(
            f"{where}: class(es) {names} are not classes of the dataset ({sorted(classes)}) "
            f"at line(s) {lines}"
        )
    out = df.copy()
    out["class"] = out["class"].astype(str)
    out["class_num"] = out["class"].map(classes).astype(int)
    return out


def read_pool(path: str | os.PathLike, classes: dict[str, int]) -> pd.DataFrame:
    """A pool dirmap, every row a candidate, numbered in the dataset's classes."""
    df = dirmap.read(path).reset_index(drop=True)
    df = _with_dataset_classes(df, classes, f"{path}: pool dirmap")
    df["orig_split"] = df["split"]
    return _absolute(df, path)


def read_generated(path: str | os.PathLike, classes: dict[str, int]) -> pd.DataFrame:
    """Generated images: a dirmap, or a folder with one sub-folder of images per class name."""
    path = Path(path)
    if path.is_file():
        df = dirmap.read(path).reset_index(drop=True)
        return _absolute(_with_dataset_classes(df, classes, f"{path}: generated dirmap"), path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: generated images not found (a folder or a dirmap)")
    rows = []
    for sub in sorted(p for p in path.iterdir() if p.is_dir()):
        if sub.name not in classes:
            raise ValueError(
                f"{sub}: folder of generated images for class {sub.name!r}, which is not a class "
                f"of the dataset ({sorted(classes)})"
            )
        for image in sorted(sub.rglob("*")):
            if image.suffix.lower() in IMAGE_EXTENSIONS and not image.name.startswith("."):
                rows.append({"class": sub.name, "im_path": os.path.abspath(image)})
    if not rows:
        raise ValueError(f"{path}: no images in <class>/ sub-folders")
    df = pd.DataFrame(rows)
    df["class_num"] = df["class"].map(classes).astype(int)
    return df


def hold_out(
    df: pd.DataFrame, split: str, fraction: float, seed: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(the rest, the pool): `fraction` of each class's images of `split`, drawn at random, at
    least one per class kept out of the pool."""
    rng = np.random.default_rng(seed)
    rows = df[df["split"] == split]
    if rows.empty:
        raise ValueError(f"no images in split {split!r} to hold a pool out of")
    taken = []
    for _, group in rows.groupby("class_num", sort=True):
        n = min(int(round(fraction * len(group))), len(group) - 1)
        taken.extend(rng.choice(group.index.to_numpy(), size=n, replace=False).tolist())
    pool = df.loc[sorted(taken)].copy()
    pool["orig_split"] = pool["split"]
    return df.drop(index=taken), pool


def prepare(
    dataset_csv: str | os.PathLike,
    out_base: str | os.PathLike,
    out_pool: str | os.PathLike,
    cfg: DebuggingConfig,
    *,
    pool_csv: str | os.PathLike | None = None,
    generated: dict[str, str] | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Write the base dirmap (training and evaluation rows) and the pool dirmap."""
    df = _absolute(dirmap.read(dataset_csv), dataset_csv)
    classes = dict(zip(df["class"].astype(str), df["class_num"], strict=False))
    if pool_csv is not None:
        base, pool = df, read_pool(pool_csv, classes)
        log.info("pool: %d images from %s", len(pool), pool_csv)
    else:
        spec = cfg.pool
        base, pool = hold_out(df, spec["holdout_split"], spec["holdout_fraction"], spec["seed"])
        log.info(
            "pool: %d images held out of split %s (fraction %s)",
            len(pool), spec["holdout_split"], spec["holdout_fraction"],
        )  # fmt: skip
    known = set(base["im_path"].map(os.path.realpath))
    again = pool["im_path"].map(os.path.realpath).isin(known)
    if again.any():
        raise ValueError(
            f"{pool_csv}: {int(again.sum())} pool image(s) are already images of the dataset, "
            f"e.g. {pool.loc[again, 'im_path'].iloc[0]}: a pool holds extra images"
        )
    if "source" in pool.columns:
        raise ValueError("the pool has a 'source' column, which the debugging stage writes")
    parts = [pool.assign(source=POOL)]
    for name, path in sorted((generated or {}).items()):
        images = read_generated(path, classes)
        log.info("%s: %d generated images from %s", name, len(images), path)
        parts.append(images.assign(source=name))
    pool = pd.concat(parts, ignore_index=True)
    pool["split"] = "train"
    for split in (cfg.slice_split, cfg.eval_split):
        if not (base["split"] == split).any():
            raise ValueError(f"{dataset_csv}: no images left in split {split!r} to debug on")
    for frame, out in ((base, out_base), (pool, out_pool)):
        frame = frame.copy()
        frame["im_path"] = dirmap.relative_to(frame["im_path"], Path(out).parent)
        dirmap.write(frame, out)
    return base, pool
