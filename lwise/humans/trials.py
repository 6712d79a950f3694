"""Human data: per-trial responses and per-image label distributions (simulated observers are in
`lwise.humans.simulate`).

Trials CSV, one row per trial:
  required `participant, image, condition, response, correct`;
  optional `rt` (seconds or ms, >= 0), `trial`, `block` (integers), `class` (the true class),
  `synthetic` (0/1 or true/false; simulated trials set it).
`response` is a class name or `abstain`; `correct` is 0/1 or true/false (abstaining counts as
incorrect). Other columns are kept (as text when read from a file).

Label-distribution CSV (VisAlign style), one row per image: `image`, one column per class and
`abstain`, holding either probabilities (each row summing to 1) or response counts, which are
normalised.

Errors name the file, the column and the first offending CSV lines (the header is line 1).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from lwise.core.atomic import write_csv
from lwise.data.dirmap import csv_lines

REQUIRED = ("participant", "image", "condition", "response", "correct")
OPTIONAL = ("rt", "trial", "block", "class", "synthetic")
ABSTAIN = "abstain"
_TRUE, _FALSE = {"1", "1.0", "true"}, {"0", "0.0", "false"}


class HumanDataError(ValueError):
    """A human-data table breaks its format; the message names file, column and lines."""


def class_names(dirmap: pd.DataFrame) -> list[str]:
    """A dataset's classes in `class_num` order: the response options of its trials."""
    return dirmap.drop_duplicates("class").sort_values("class_num")["class"].astype(str).tolist()


def _text(df: pd.DataFrame) -> pd.DataFrame:
    """Every cell as a stripped string, missing cells as ''."""
    return df.apply(lambda col: col.map(lambda v: "" if pd.isna(v) else str(v).strip()))


def _raise(source: object, kind: str, problems: list[str]) -> None:
    if problems:
        raise HumanDataError(f"{source}: invalid {kind}:\n  - " + "\n  - ".join(problems))


def _values(series: pd.Series, mask: pd.Series) -> list[str]:
    return sorted(set(series[mask]))[:5]


def _trial_problems(raw: pd.DataFrame, classes: Sequence[str] | None) -> list[str]:
    """Problems of a trials table whose checked columns are all text (see `_text`)."""
    out = []
    for col in REQUIRED:
        bad = raw[col] == ""
        if bad.any():
            out.append(f"column '{col}': empty at line(s) {csv_lines(raw, bad)}")
    for col in ("correct", "synthetic"):
        if col not in raw.columns:
            continue
        bad = ~raw[col].str.lower().isin(_TRUE | _FALSE) & ((raw[col] != "") | (col == "correct"))
        if bad.any():
            out.append(
                f"column '{col}': expected 0/1 or true/false, got {_values(raw[col], bad)} "
                f"at line(s) {csv_lines(raw, bad)}"
            )
    flag = raw["correct"].str.lower()
    known = set(classes) if classes is not None else None
    if "class" in raw.columns:
        if known is not None:
            bad = ~raw["class"].isin(known)
            if bad.any():
                out.append(
                    f"column 'class': unknown class(es) {_values(raw['class'], bad)} "
                    f"(expected one of {sorted(known)}) at line(s) {csv_lines(raw, bad)}"
                )
        else:
            known = set(raw["class"]) - {""}
        answered = flag.isin(_TRUE | _FALSE)
        disagree = answered & (flag.isin(_TRUE) != (raw["response"] == raw["class"]))
        if disagree.any():
            out.append(
                "column 'correct': disagrees with response == class at line(s) "
                f"{csv_lines(raw, disagree)}"
            )
    if known is not None:
        bad = (raw["response"] != "") & ~raw["response"].isin(known | {ABSTAIN})
        if bad.any():
            out.append(
                f"column 'response': expected a class name or '{ABSTAIN}', got "
                f"{_values(raw['response'], bad)} at line(s) {csv_lines(raw, bad)}"
            )
    for col, integer in (("rt", False), ("trial", True), ("block", True)):
        if col not in raw.columns:
            continue
        num = pd.to_numeric(raw[col].replace("", np.nan), errors="coerce")
        bad = (raw[col] != "") & (num.isna() | (num < 0) | (integer & (num != num.round())))
        if bad.any():
            kind = "a non-negative integer" if integer else "a non-negative number"
            out.append(
                f"column '{col}': expected {kind}, got {_values(raw[col], bad)} "
                f"at line(s) {csv_lines(raw, bad)}"
            )
    if "trial" in raw.columns:
        dup = (raw["trial"] != "") & raw.duplicated(["participant", "trial"], keep=False)
        if dup.any():
            out.append(
                f"columns 'participant'+'trial': duplicated at line(s) {csv_lines(raw, dup)}"
            )
    return out


def validate_trials(
    df: pd.DataFrame, source: object = "<trials>", *, classes: Sequence[str] | None = None
) -> pd.DataFrame:
    """Check a trials table and return a typed copy (`correct`/`synthetic` bool, `rt` float,
    `trial`/`block` nullable ints, text columns str).

    Responses are checked against `classes` when given, else against the `class` column when
    present. Line numbers are those of the table written as CSV (header = line 1).
    """
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        _raise(
            source,
            "trials table",
            [f"missing required column(s) {missing}; found {list(df.columns)}"],
        )
    raw = _text(df.reset_index(drop=True)[[c for c in df.columns if c in REQUIRED + OPTIONAL]])
    _raise(source, "trials table", _trial_problems(raw, classes))
    out = df.reset_index(drop=True).copy()
    for col in ("participant", "image", "condition", "response", "class"):
        if col in out.columns:
            out[col] = raw[col]
    for col in ("correct", "synthetic"):
        if col in out.columns:
            out[col] = raw[col].str.lower().isin(_TRUE)
    if "rt" in out.columns:
        out["rt"] = pd.to_numeric(raw["rt"].replace("", np.nan))
    for col in ("trial", "block"):
        if col in out.columns:
            out[col] = pd.to_numeric(raw[col].replace("", np.nan)).astype("Int64")
    return out


def read_trials(path: str | os.PathLike, *, classes: Sequence[str] | None = None) -> pd.DataFrame:
    """Read and validate a trials CSV (see the module docstring for the schema)."""
    path = Path(path)
    if not path.is_file():
        raise HumanDataError(f"{path}: trials file not found")
    # Everything as text: class names like "NA" or "1" must survive, and errors quote raw cells.
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    return validate_trials(df, path, classes=classes)


def write_trials(
    df: pd.DataFrame, path: str | os.PathLike, *, classes: Sequence[str] | None = None
) -> pd.DataFrame:
    """Validate (as `validate_trials`) and write a trials CSV atomically."""
    out = validate_trials(df, path, classes=classes)
    write_csv(out, path)
    return out


# --- per-image label distributions ------------------------------------------------------------


def validate_label_distributions(
    df: pd.DataFrame,
    source: object = "<label distributions>",
    *,
    classes: Sequence[str] | None = None,
    tolerance: float = 1e-3,
) -> pd.DataFrame:
    """Check a per-image label-distribution table; return `image`, classes, `abstain` as floats.

    Class columns are `classes` when given (other columns are kept as metadata), else every
    column other than `image` and `abstain`. Rows of whole numbers that do not sum to 1 are
    counts and get normalised; other rows must sum to 1 within `tolerance`.
    """
    df = df.reset_index(drop=True)
    if classes is None:
        classes = [c for c in df.columns if c not in ("image", ABSTAIN)]
    value_cols = [*classes, ABSTAIN]
    missing = [c for c in ["image", *value_cols] if c not in df.columns]
    if missing:
        _raise(
            source,
            "label distributions",
            [f"missing column(s) {missing}; found {list(df.columns)}"],
        )
    raw = _text(df[["image", *value_cols]])
    problems = []
    bad = raw["image"] == ""
    if bad.any():
        problems.append(f"column 'image': empty at line(s) {csv_lines(raw, bad)}")
    dup = (raw["image"] != "") & raw["image"].duplicated(keep=False)
    if dup.any():
        problems.append(f"column 'image': duplicated at line(s) {csv_lines(raw, dup)}")
    values = raw[value_cols].apply(
        lambda col: pd.to_numeric(col.replace("", np.nan), errors="coerce")
    )
    for col in value_cols:
        bad = values[col].isna() | (values[col] < 0) | ~np.isfinite(values[col])
        if bad.any():
            problems.append(
                f"column '{col}': expected a non-negative number, got "
                f"{_values(raw[col], bad)} at line(s) {csv_lines(raw, bad)}"
            )
    _raise(source, "label distributions", problems)
    totals = values.sum(axis=1)
    counts = (values == values.round()).all(axis=1) & ~np.isclose(
        totals, 1.0, rtol=0, atol=tolerance
    )
    bad = (totals == 0) | (~counts & ~np.isclose(totals, 1.0, rtol=0, atol=tolerance))
    if bad.any():
        problems.append(
            f"rows must sum to 1 (probabilities, tolerance {tolerance}) or hold whole-number "
            f"counts with a positive total; sums {sorted(set(totals[bad].round(6)))[:5]} "
            f"at line(s) {csv_lines(raw, bad)}"
        )
    _raise(source, "label distributions", problems)
    out = df.copy()
    out["image"] = raw["image"]
    out[value_cols] = values.div(totals, axis=0)
    return out


def read_label_distributions(
    path: str | os.PathLike, *, classes: Sequence[str] | None = None, tolerance: float = 1e-3
) -> pd.DataFrame:
    """Read and validate a per-image label-distribution CSV (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise HumanDataError(f"{path}: label-distribution file not found")
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    return validate_label_distributions(df, path, classes=classes, tolerance=tolerance)


def response_distributions(trials: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Per-image distribution of responses over `classes` + `abstain` from validated trials.

    Columns: `image`, the classes, `abstain` (fractions summing to 1) and `n_responses`.
    """
    unknown = sorted(set(trials["response"]) - set(classes) - {ABSTAIN})
    if unknown:
        raise HumanDataError(f"responses {unknown[:5]} are not among the classes {list(classes)}")
    counts = pd.crosstab(trials["image"], trials["response"]).reindex(
        columns=[*classes, ABSTAIN], fill_value=0
    )
    n = counts.sum(axis=1)
    out = counts.div(n, axis=0)
    out["n_responses"] = n
    out.columns.name = None
    return out.reset_index()
