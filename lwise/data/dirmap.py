"""Dirmaps: one CSV row per image, `im_path` relative to the CSV's folder.

Required columns: `split, class, class_num, im_path`. Every other column (orig_class,
orig_class_num, orig_im_path, url, robust_gt_logit, difficulty, dataset-specific ones) is kept
by every stage. Format: L-WISE README "Dirmap indexing".
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from lwise.core.atomic import write_csv

REQUIRED = ("split", "class", "class_num", "im_path")
SPLITS = ("train", "val", "test")
# Columns read as text whatever they look like ("3" is a class name for the digits).
TEXT_COLUMNS = ("split", "class", "orig_class", "im_path", "orig_im_path", "url")
MAX_LISTED = 5


class DirmapError(ValueError):
    """A dirmap breaks the format; the message names the file and the first offending rows."""


def csv_lines(df: pd.DataFrame, mask: pd.Series) -> str:
    # CSV line numbers: the header is line 1.
    lines = [str(i + 2) for i in df.index[mask.to_numpy()][:MAX_LISTED]]
    more = int(mask.sum()) - len(lines)
    return ", ".join(lines) + (f" (+{more} more)" if more > 0 else "")


def problems(df: pd.DataFrame, root: Path | None) -> list[str]:
    """Everything wrong with a dirmap, one line per kind of problem (empty when valid).

    `root` is the folder `im_path` is relative to; `None` skips the file-existence check.
    """
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        return [f"missing required column(s) {missing}; found {list(df.columns)}"]
    out = []
    df = df.reset_index(drop=True)
    for col in REQUIRED:
        bad = df[col].isna()
        if bad.any():
            out.append(f"empty '{col}' at line(s) {csv_lines(df, bad)}")
    bad = ~df["split"].isin(SPLITS)
    if bad.any():
        values = sorted(set(df.loc[bad, "split"].astype(str)))[:MAX_LISTED]
        out.append(
            f"unknown split value(s) {values} (expected one of {list(SPLITS)}) "
            f"at line(s) {csv_lines(df, bad)}"
        )
    nums = pd.to_numeric(df["class_num"], errors="coerce")
    bad = nums.isna() | (nums != nums.round())
    if bad.any():
        out.append(f"'class_num' is not an integer at line(s) {csv_lines(df, bad)}")
    pairs = df[["class", "class_num"]].astype(str).drop_duplicates()
    for col, other in (("class", "class_num"), ("class_num", "class")):
        dup = pairs[pairs.duplicated(col, keep=False)]
        if not dup.empty:
            key = dup[col].iloc[0]
            seen = sorted(dup.loc[dup[col] == key, other])
            mask = df[col].astype(str) == key
            out.append(
                f"'class'/'class_num' not one-to-one: {col} {key!r} has {other} {seen} "
                f"at line(s) {csv_lines(df, mask)}"
            )
    dup = df["im_path"].duplicated(keep=False)
    if dup.any():
        out.append(f"duplicate 'im_path' at line(s) {csv_lines(df, dup)}")
    if root is not None:
        exists = df["im_path"].map(lambda p: isinstance(p, str) and (root / p).is_file())
        if not exists.all():
            first = df.loc[~exists, "im_path"].iloc[0]
            out.append(
                f"image file(s) missing at line(s) {csv_lines(df, ~exists)}, "
                f"e.g. {root / str(first)}"
            )
    return out


def validate(
    df: pd.DataFrame, path: str | os.PathLike, *, check_files: bool = True
) -> pd.DataFrame:
    """Raise DirmapError listing every problem of the dirmap read from `path`."""
    found = problems(df, Path(path).parent if check_files else None)
    if found:
        raise DirmapError(f"{path}: invalid dirmap:\n  - " + "\n  - ".join(found))
    return df


def read(path: str | os.PathLike, *, check_files: bool = True) -> pd.DataFrame:
    """Read and validate a dirmap; `class_num` comes back as int."""
    path = Path(path)
    if not path.is_file():
        raise DirmapError(f"{path}: dirmap not found")
    df = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS})
    validate(df, path, check_files=check_files)
    df["class_num"] = pd.to_numeric(df["class_num"]).astype(int)
    return df


def ordered(df: pd.DataFrame) -> pd.DataFrame:
    """Required columns first, rows sorted by split, class_num, im_path."""
    cols = list(REQUIRED) + [c for c in df.columns if c not in REQUIRED]
    split_rank = df["split"].map({s: i for i, s in enumerate(SPLITS)})
    order = (
        df.assign(_s=split_rank).sort_values(["_s", "class_num", "im_path"], kind="stable").index
    )
    return df.loc[order, cols].reset_index(drop=True)


def write(df: pd.DataFrame, path: str | os.PathLike, *, check_files: bool = True) -> pd.DataFrame:
    """Validate (against files next to `path`), order and write a dirmap atomically."""
    df = ordered(df)
    Path(path).parent.mkdir(parents=True, exist_ok=True)  # `..` in im_path needs it to exist
    validate(df, path, check_files=check_files)
    write_csv(df, path)
    return df


def relative_to(paths: pd.Series, folder: str | os.PathLike) -> pd.Series:
    """Express absolute (or cwd-relative) image paths relative to `folder`, with '/' separators."""
    folder = os.path.abspath(folder)
    return paths.map(lambda p: Path(os.path.relpath(os.path.abspath(p), folder)).as_posix())
