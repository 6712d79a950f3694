"""Human data: per-trial responses, per-image label distributions, and simulated observers.

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
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.special import expit

from lwise.core.atomic import write_csv
from lwise.data.dirmap import csv_lines

REQUIRED = ("participant", "image", "condition", "response", "correct")
OPTIONAL = ("rt", "trial", "block", "class", "synthetic")
ABSTAIN = "abstain"
_TRUE, _FALSE = {"1", "1.0", "true"}, {"0", "0.0", "false"}


class HumanDataError(ValueError):
    """A human-data table breaks its format; the message names file, column and lines."""


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


# --- simulated observers ------------------------------------------------------------------------


def simulate_observers(
    images: pd.DataFrame,
    conditions: Mapping[str, float],
    *,
    n_participants: int,
    trials_per_participant: int,
    classes: Sequence[str] | None = None,
    difficulty_col: str = "difficulty",
    slope: float = 1.0,
    ability_sd: float = 0.5,
    lapse: float = 0.02,
    abstain_max: float = 0.1,
    seed: int = 0,
) -> pd.DataFrame:
    """Synthetic trials from a psychometric observer model (marked `synthetic=True`).

    `images` has columns `image`, `class` and `difficulty_col`, a latent difficulty in logit
    units that must not come from the guide model (e.g. an image-statistics proxy).
    `conditions` maps each condition name to its boost in the same units (e.g. larger
    enhancement epsilon, larger boost). `classes` is the response set (default: the classes
    present in `images`); K = len(classes).

    Model, per participant i (ability_i ~ Normal(0, ability_sd)) and trial on image j in
    condition c:
        p_correct = g + (1 - g - lapse) * sigmoid(slope * (ability_i + boost_c - difficulty_j)),
        g = 1/K (guessing), `lapse` = attention lapses.
    The response is the true class with probability p_correct. Otherwise it is an error: an
    abstention with probability abstain_max * (1 - sigmoid(...)), so abstaining is likeliest
    near chance and vanishes on easy trials, else a class drawn uniformly among the K - 1 wrong
    ones. P(correct) therefore stays exactly p_correct, which is returned per trial.

    Each participant sees images in a random order (reshuffled after every pass when
    `trials_per_participant` exceeds the number of images) with conditions balanced across
    trials in random order.
    """
    missing = [c for c in ("image", "class", difficulty_col) if c not in images.columns]
    if missing:
        raise ValueError(f"images table lacks column(s) {missing}; found {list(images.columns)}")
    if images.empty or images["image"].duplicated().any():
        raise ValueError("images table must list each image once and not be empty")
    difficulty = pd.to_numeric(images[difficulty_col], errors="coerce").to_numpy(dtype=float)
    if not np.isfinite(difficulty).all():
        raise ValueError(f"images column '{difficulty_col}' must hold finite numbers")
    classes = sorted(set(images["class"])) if classes is None else list(classes)
    k = len(classes)
    if k < 2 or len(set(classes)) != k or ABSTAIN in classes:
        raise ValueError(f"classes must be >= 2 distinct names other than '{ABSTAIN}': {classes}")
    stray = sorted(set(images["class"]) - set(classes))
    if stray:
        raise ValueError(f"image classes {stray} are not among the classes {classes}")
    if not conditions:
        raise ValueError("conditions: give at least one condition name with its boost")
    guess = 1.0 / k
    if not 0 <= lapse < 1 - guess:
        raise ValueError(f"lapse must be in [0, {1 - guess:g}), got {lapse}")
    if not 0 <= abstain_max <= 1:
        raise ValueError(f"abstain_max must be in [0, 1], got {abstain_max}")
    if n_participants < 1 or trials_per_participant < 1:
        raise ValueError("n_participants and trials_per_participant must be >= 1")

    rng = np.random.default_rng(seed)
    names = list(conditions)
    boosts = np.array([float(conditions[c]) for c in names])
    n_img, n_trials = len(images), trials_per_participant
    passes = -(-n_trials // n_img)
    img_idx = np.concatenate(
        [
            np.concatenate([rng.permutation(n_img) for _ in range(passes)])[:n_trials]
            for _ in range(n_participants)
        ]
    )
    cond_idx = np.concatenate(
        [rng.permutation(np.resize(np.arange(len(names)), n_trials)) for _ in range(n_participants)]
    )
    participant = np.repeat(np.arange(n_participants), n_trials)
    ability = rng.normal(0.0, ability_sd, n_participants)[participant]
    drive = expit(slope * (ability + boosts[cond_idx] - difficulty[img_idx]))
    p_correct = guess + (1 - guess - lapse) * drive

    true_class = images["class"].to_numpy()[img_idx]
    class_pos = pd.Index(classes).get_indexer(true_class)
    correct = rng.random(len(img_idx)) < p_correct
    abstains = ~correct & (rng.random(len(img_idx)) < abstain_max * (1 - drive))
    # A uniform draw among the K-1 other classes: skip over the true class's position.
    other = rng.integers(0, k - 1, len(img_idx))
    other = other + (other >= class_pos)
    response = np.where(correct, true_class, np.asarray(classes, dtype=object)[other])
    response = np.where(abstains, ABSTAIN, response)

    trials = pd.DataFrame(
        {
            "participant": [f"sim{i:03d}" for i in participant],
            "trial": np.tile(np.arange(1, n_trials + 1), n_participants),
            "image": images["image"].astype(str).to_numpy()[img_idx],
            "class": true_class,
            "condition": np.asarray(names, dtype=object)[cond_idx],
            "response": response,
            "correct": correct,
            "p_correct": p_correct,
            "synthetic": True,
        }
    )
    return validate_trials(trials, "simulated trials", classes=classes)
