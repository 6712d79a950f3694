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
    # Empty cells are reported above; they would break the sorting below (NaN among strings).
    pairs = df[["class", "class_num"]].dropna().astype(str).drop_duplicates()
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
        # normpath: "a/../b.png" names b.png even when no folder "a" exists.
        exists = df["im_path"].map(
            lambda p: isinstance(p, str) and Path(os.path.normpath(root / p)).is_file()
        )
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


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        df = pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, encoding="utf-8")
    except UnicodeDecodeError:
        data = path.read_bytes()
        try:
            data.decode("utf-8")
            pos = 0
        except UnicodeDecodeError as err:
            pos = err.start
        line = data.count(b"\n", 0, pos) + 1
        raise DirmapError(
            f"{path}: not UTF-8 text: byte {data[pos : pos + 1]!r} at line {line}; "
            "save the CSV as UTF-8"
        ) from None
    except pd.errors.EmptyDataError:
        raise DirmapError(
            f"{path}: the file is empty; expected a header line with {list(REQUIRED)}"
        ) from None
    except pd.errors.ParserError as err:
        raise DirmapError(f"{path}: not a valid CSV: {err}") from None
    if df.empty and not missing_columns(df):
        raise DirmapError(f"{path}: has a header but no rows: a dirmap lists at least one image")
    return df


def missing_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in REQUIRED if c not in df.columns]


def outside(df: pd.DataFrame, folder: Path, roots: list[Path]) -> pd.Series:
    """Rows whose image, resolved (links followed), lies in none of `roots`."""
    resolved = [r.resolve() for r in roots]

    def escapes(p) -> bool:
        full = (folder / str(p)).resolve()
        return not any(full.is_relative_to(r) for r in resolved)

    return df["im_path"].map(escapes).astype(bool)


def read(
    path: str | os.PathLike, *, check_files: bool = True, roots: list[Path] | None = None
) -> pd.DataFrame:
    """Read and validate a dirmap; `class_num` comes back as int.

    With `roots`, every image must resolve inside one of those folders (a dirmap from a
    download must not reach files elsewhere on the machine)."""
    path = Path(path)
    if not path.is_file():
        raise DirmapError(f"{path}: dirmap not found")
    df = _read_csv(path)
    validate(df, path, check_files=check_files)
    if roots is not None:
        bad = outside(df, path.parent, roots)
        if bad.any():
            first = df.loc[bad, "im_path"].iloc[0]
            raise DirmapError(
                f"{path}: image path(s) outside the dataset's folders at line(s) "
                f"{csv_lines(df, bad)}, e.g. {first!r}; images must lie under "
                f"{', '.join(str(r) for r in roots)} (list other folders in the dataset's "
                "'image_roots')"
            )
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
    rel = [os.path.relpath(os.path.abspath(p), folder) for p in paths]
    if os.sep != "/":
        rel = [Path(p).as_posix() for p in rel]
    return pd.Series(rel, index=paths.index, dtype=object)
