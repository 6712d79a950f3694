"""Alignment inputs: stimulus sets, human trials and model outputs, read, checked and matched.

Image keys: every stimulus set's dirmap lists its images by *key* (`im_path`, e.g.
`val/3/digit_0012.png`, the same in every set), and human trials name images by that key. Tables
listed relative to another folder (the scored dirmap and `probabilities.csv` say
`../imagefolder/<key>`) are matched through `key_root`, the folder keys are relative to
(`lwise.core.keys.image_key`), ignoring the file extension (the stimuli may be re-encoded, e.g.
JPEG sources saved as PNG).

The guide model itself (`GuideInputs`) is an input only where `evaluation.abstention` names a
method that needs more than the softmax (ODIN's input gradients, the penultimate features of
the training split for Mahalanobis, KNN and TAPUDD, MC-Dropout's dropout passes): the model
file, and the ImageFolder's dirmap, whose `train` rows the distance methods fit on and whose
rows of the natural images the model is run on.

Errors are `AlignmentDataError`s naming the file, the column and the first offending lines.
"""

from __future__ import annotations

import logging
import os
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from lwise.core import privacy
from lwise.core.keys import NATURAL, image_key
from lwise.data import dirmap
from lwise.data.dirmap import csv_lines
from lwise.humans import trials as humans

__all__ = [
    "AlignmentDataError",
    "AlignmentInputs",
    "GuideInputs",
    "read_inputs",
    "match_keys",
    "finite_column",
    "bool_column",
    "per_trial",
]

log = logging.getLogger(__name__)


class AlignmentDataError(ValueError):
    """Inputs of the alignment analysis do not fit together; the message names file and column."""


@dataclass(frozen=True)
class GuideInputs:
    """What the model-based abstention methods run on (`lwise.alignment.visalign.scoring`)."""

    model: Path  # the guide model as the scoring stage loads it (our format, or trusted)
    trusted: bool  # allow full unpickling of `model`
    train_dirmap_csv: Path  # the ImageFolder's dirmap: its `train` rows fit the distance methods
    images: pd.DataFrame  # its rows of the natural images, indexed by natural-set key


@dataclass(frozen=True)
class AlignmentInputs:
    """Everything the analyses read, checked against each other; per-image values are indexed by
    natural-set key."""

    natural: pd.DataFrame  # the natural set's dirmap (im_path = key)
    sets: Mapping[str, pd.DataFrame]  # every stimulus set's dirmap by name, natural included
    classes: list[str]  # class_num order
    trials: pd.DataFrame  # all validated trials
    natural_trials: pd.DataFrame  # those in condition `natural`
    logit_column: str
    logits: pd.Series  # the guide model's ground-truth logit
    model_correct: pd.Series  # the guide model's correctness
    vanilla: pd.Series | None  # a non-robust model's logit, when given
    vanilla_column: str | None
    probabilities: pd.DataFrame | None  # the guide model's softmax over `classes`, when given
    label_distributions_csv: Path | None  # per-image human distributions, when given
    synthetic: bool  # simulated observers: every output says so
    guide: GuideInputs | None = None  # the guide model, for model-based abstention methods


def _stem(key: str) -> str:
    return posixpath.splitext(key)[0]


def match_keys(
    table: pd.DataFrame, source: object, wanted: Sequence[str], key_root, what: str
) -> pd.Series:
    """Row label of `table` (column `im_path`) for each wanted key, matched without extension."""
    if "im_path" not in table.columns:
        raise AlignmentDataError(f"{source}: missing column 'im_path'; found {list(table.columns)}")
    stems = table["im_path"].astype(str).map(lambda p: _stem(image_key(source, p, key_root)))
    dup = stems.duplicated(keep=False)
    if dup.any():
        raise AlignmentDataError(
            f"{source}: several rows name the same image (ignoring the extension) at "
            f"line(s) {csv_lines(table, dup)}"
        )
    row_of = pd.Series(table.index, index=stems.to_numpy())
    wanted_stems = pd.Index([_stem(k) for k in wanted])
    missing = ~wanted_stems.isin(row_of.index)
    if missing.any():
        example = list(pd.Index(wanted)[missing][:3])
        hint = f" relative to key_root {key_root}" if key_root is not None else ""
        raise AlignmentDataError(
            f"{source}: no row for {int(missing.sum())} {what} image(s), e.g. {example} "
            f"(im_path matched{hint}, extension ignored)"
        )
    return pd.Series(row_of.loc[wanted_stems].to_numpy(), index=pd.Index(wanted, name="image"))


def finite_column(table: pd.DataFrame, column: str, source: object) -> pd.Series:
    if column not in table.columns:
        raise AlignmentDataError(
            f"{source}: missing column '{column}'; found {list(table.columns)}"
        )
    values = pd.to_numeric(table[column], errors="coerce").astype(float)
    bad = ~np.isfinite(values)
    if bad.any():
        raise AlignmentDataError(
            f"{source}: column '{column}' must hold finite numbers; not at line(s) "
            f"{csv_lines(table, bad)}"
        )
    return values


def bool_column(table: pd.DataFrame, column: str, source: object) -> pd.Series:
    if column not in table.columns:
        raise AlignmentDataError(
            f"{source}: missing column '{column}'; found {list(table.columns)}"
        )
    text = table[column].astype(str).str.strip().str.lower()
    bad = ~text.isin(["true", "false", "1", "0", "1.0", "0.0"])
    if bad.any():
        raise AlignmentDataError(
            f"{source}: column '{column}' must be true/false or 0/1; not at line(s) "
            f"{csv_lines(table, bad)}"
        )
    return text.isin(["true", "1", "1.0"])


def per_trial(trials: pd.DataFrame, per_image: pd.Series, name: str) -> np.ndarray:
    """The per-image value of each trial's image."""
    values = trials["image"].map(per_image)
    if values.isna().any():
        missing = sorted(set(trials.loc[values.isna(), "image"]))[:3]
        raise AlignmentDataError(f"{name}: no value for trial image(s) {missing}")
    return values.to_numpy(dtype=float)


def _read_sets(
    natural_csv: Path, natural: pd.DataFrame, set_dirmaps: Mapping[str, str | os.PathLike]
) -> dict[str, pd.DataFrame]:
    given = Path(set_dirmaps.get(NATURAL, natural_csv))
    if given.resolve() != natural_csv.resolve():
        raise AlignmentDataError(
            f"set_dirmaps['{NATURAL}'] is {given} but the natural dirmap is {natural_csv}"
        )
    sets = {}
    for name, path in {NATURAL: natural_csv, **dict(set_dirmaps)}.items():
        # Tables only: the image files are not needed here (and need not be on this machine).
        df = natural if name == NATURAL else dirmap.read(path, check_files=False)
        df = df.assign(im_path=df["im_path"].astype(str))
        sets[name] = df
    return sets


def _check_trials(trials: pd.DataFrame, source, natural: pd.DataFrame, sets) -> None:
    """Every trial's condition is a stimulus set that holds its image, of the right class."""
    unknown = ~trials["condition"].isin(list(sets))
    if unknown.any():
        raise AlignmentDataError(
            f"{source}: column 'condition': {sorted(set(trials.loc[unknown, 'condition']))[:5]} "
            f"are not stimulus sets ({sorted(sets)}) at line(s) {csv_lines(trials, unknown)}"
        )
    for name, df in sets.items():
        in_set = trials["condition"] == name
        missing = in_set & ~trials["image"].isin(df["im_path"])
        if missing.any():
            raise AlignmentDataError(
                f"{source}: column 'image': {sorted(set(trials.loc[missing, 'image']))[:3]} not "
                f"in stimulus set '{name}' at line(s) {csv_lines(trials, missing)}"
            )
    if "class" in trials.columns:
        truth = trials["image"].map(natural.set_index("im_path")["class"].astype(str))
        wrong = truth.notna() & (trials["class"] != truth)
        if wrong.any():
            raise AlignmentDataError(
                f"{source}: column 'class' disagrees with the natural dirmap's class at "
                f"line(s) {csv_lines(trials, wrong)}"
            )


def _synthetic_flag(trials: pd.DataFrame, synthetic: bool | None, source) -> bool:
    marked = bool("synthetic" in trials.columns and trials["synthetic"].any())
    if synthetic is None:
        return marked
    if marked and not synthetic:
        raise AlignmentDataError(
            f"{source}: trials are marked synthetic; refusing to report them as human data"
        )
    return bool(synthetic)


def _read_probabilities(
    path: str | os.PathLike, classes: Sequence[str], keys: Sequence[str], key_root
) -> pd.DataFrame:
    """Model softmax over the dataset's classes per natural image key (rows renormalised when
    the model has extra classes: a decision among the task's classes, as present_classes_only)."""
    table = pd.read_csv(path, dtype={"im_path": str})
    table.columns = [str(c) for c in table.columns]
    missing = [c for c in classes if c not in table.columns]
    if missing:
        raise AlignmentDataError(
            f"{path}: missing class column(s) {missing[:5]}; found {list(table.columns)[:12]}"
        )
    values = pd.DataFrame({c: finite_column(table, c, path) for c in classes})
    bad = (values < 0).any(axis=1) | (values.sum(axis=1) <= 0)
    if bad.any():
        raise AlignmentDataError(
            f"{path}: probabilities must be non-negative with a positive sum over the classes "
            f"{list(classes)[:5]}...; not at line(s) {csv_lines(table, bad)}"
        )
    rows = match_keys(table, path, keys, key_root, "natural")
    values = values.loc[rows.to_numpy()].set_axis(rows.index)
    return values.div(values.sum(axis=1), axis=0)


def _vanilla_logits(path, column, keys, key_root) -> tuple[pd.Series, str]:
    table = dirmap.read(path, check_files=False)
    if column is None:
        column = next(
            (c for c in ("vanilla_gt_logit", "robust_gt_logit") if c in table.columns),
            "vanilla_gt_logit",
        )
    values = finite_column(table, column, path)
    rows = match_keys(table, path, keys, key_root, "natural")
    return pd.Series(values.loc[rows.to_numpy()].to_numpy(), index=rows.index), column


def _guide_inputs(model, trusted: bool, train_dirmap_csv, keys, key_root) -> GuideInputs:
    """The guide model and the ImageFolder's rows of the natural images, checked."""
    model = Path(model)
    if not model.is_file():
        raise AlignmentDataError(f"{model}: guide model not found")
    if train_dirmap_csv is None:
        raise AlignmentDataError(
            f"guide model {model} given without train_dirmap_csv (the ImageFolder's dirmap.csv): "
            "the model-based abstention methods need its training split and images"
        )
    train_dirmap_csv = Path(train_dirmap_csv)
    table = dirmap.read(train_dirmap_csv)
    rows = match_keys(table, train_dirmap_csv, keys, key_root, "natural")
    images = table.loc[rows.to_numpy()].set_axis(rows.index)
    return GuideInputs(model, bool(trusted), train_dirmap_csv, images)


def read_inputs(
    natural_dirmap_csv: str | os.PathLike,
    set_dirmaps: Mapping[str, str | os.PathLike],
    trials_csv: str | os.PathLike,
    *,
    logit_column: str,
    key_root: str | os.PathLike | None = None,
    vanilla_dirmap_csv: str | os.PathLike | None = None,
    vanilla_logit_column: str | None = None,
    probabilities_csv: str | os.PathLike | None = None,
    label_distributions_csv: str | os.PathLike | None = None,
    synthetic: bool | None = None,
    guide_model: str | os.PathLike | None = None,
    guide_trusted: bool = False,
    train_dirmap_csv: str | os.PathLike | None = None,
) -> AlignmentInputs:
    """Read and cross-check the inputs of `lwise.alignment.evaluate.evaluate_alignment` (see
    there); raises AlignmentDataError (or the trials validator's HumanDataError) on a mismatch.
    `guide_model` (with `train_dirmap_csv`, the ImageFolder's dirmap) only for model-based
    abstention methods: see `GuideInputs`."""
    natural_csv = Path(natural_dirmap_csv)
    natural = dirmap.read(natural_csv, check_files=False)
    natural["im_path"] = natural["im_path"].astype(str)
    classes = humans.class_names(natural)
    keys = natural["im_path"].tolist()
    logits = pd.Series(finite_column(natural, logit_column, natural_csv).to_numpy(), index=keys)
    model_correct = pd.Series(bool_column(natural, "correct", natural_csv).to_numpy(), index=keys)
    sets = _read_sets(natural_csv, natural, set_dirmaps)
    trials = humans.read_trials(trials_csv, classes=classes)
    _check_trials(trials, trials_csv, natural, sets)
    synthetic = _synthetic_flag(trials, synthetic, trials_csv)
    if not synthetic:
        # Real participants' identifiers never reach the tables and the report.
        salt = privacy.participant_salt()
        trials["participant"] = privacy.pseudonyms(trials["participant"], salt)
    natural_trials = trials[trials["condition"] == NATURAL].reset_index(drop=True)
    if natural_trials.empty:
        raise AlignmentDataError(
            f"{trials_csv}: no trials in condition '{NATURAL}'; difficulty prediction and "
            "consistency are measured on natural images"
        )
    vanilla, vanilla_column = None, None
    if vanilla_dirmap_csv is not None:
        vanilla, vanilla_column = _vanilla_logits(
            vanilla_dirmap_csv, vanilla_logit_column, keys, key_root
        )
    probs = None
    if probabilities_csv is not None:
        probs = _read_probabilities(probabilities_csv, classes, keys, key_root)
    guide = None
    if guide_model is not None:
        guide = _guide_inputs(guide_model, guide_trusted, train_dirmap_csv, keys, key_root)
    return AlignmentInputs(
        natural=natural,
        sets=sets,
        classes=classes,
        trials=trials,
        natural_trials=natural_trials,
        logit_column=logit_column,
        logits=logits,
        model_correct=model_correct,
        vanilla=vanilla,
        vanilla_column=vanilla_column,
        probabilities=probs,
        label_distributions_csv=(
            Path(label_distributions_csv) if label_distributions_csv is not None else None
        ),
        synthetic=synthetic,
        guide=guide,
    )
