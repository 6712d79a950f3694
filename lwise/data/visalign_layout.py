"""Stage 2: the dataset definer for the VisAlign layout (Lee et al., NeurIPS 2023).

VisAlign (`jiyounglee-0523/VisAlign`) ships:

    train_split_filenames/final_train/<class>.txt   lines "<source>/<file>", 1,125 per class
    train_split_filenames/final_eval/<class>.txt    125 per class
    train_files/<file>                               the training images
    open_test_set/label/category{1..8}.txt          lines "<source dir>/<file>"
    open_test_set/<source dir>/<file>                the open test images
    open_test_set/labels.pk                          file name -> 11-way gold distribution

(`dataset/imagenet.py`, `dataset/imagenet_test.py`, `evaluate_visual_alignment.py`). Classes
are numbered as VisAlign fixes them (`CLASSES`; abstain is index 10).

`part="train"` (a dataset entry's definer) lists the training images: split train and val.
`part="open_test"` (the visalign rules' test set) lists the open test set: split test, with
`category` (1-8), `group` (Must-Act, Must-Abstain, Uncertain), `file_name` and the 11-way gold
distribution in `gold_<class>` and `gold_abstain`; `class`/`class_num` are the gold majority
(`abstain`/10 for images that must be refused). The gold file is a pickle, which runs code when
read: it is read only with `trusted: true`, like checkpoints; a CSV (`file_name` and the 11
class columns) or JSON ({file name: [11 numbers]}) export is read without it.
"""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pandas as pd

from lwise.data.definers import _is_image, register

__all__ = ["ABSTAIN", "CLASSES", "GOLD_COLUMNS", "GROUPS", "read_gold", "visalign"]

log = logging.getLogger(__name__)

# Index order of VisAlign's classes (`label2int` in evaluate_visual_alignment.py, `CLASSES` in
# make_leaderboard_submission.py); abstain is index 10.
CLASSES = (
    "tiger", "zebra", "camel", "giraffe", "elephant", "rhino", "gorilla", "bear", "kangaroo",
    "human",
)  # fmt: skip
ABSTAIN = "abstain"
GOLD_COLUMNS = tuple(f"gold_{c}" for c in (*CLASSES, ABSTAIN))
# Categories by group (the README's figure DatasetOverview.png).
GROUPS = {1: "Must-Act", 2: "Must-Act", 3: "Must-Act", 4: "Must-Abstain", 5: "Must-Abstain",
          6: "Must-Abstain", 7: "Must-Abstain", 8: "Uncertain"}  # fmt: skip
LABEL_FILES = ("labels.csv", "labels.json", "labels.pk")


class VisAlignLayoutError(ValueError):
    """The VisAlign folder breaks the layout; the message names the file and line or key."""


def _lines(path: Path) -> list[tuple[int, str]]:
    if not path.is_file():
        raise FileNotFoundError(f"{path}: VisAlign list file not found")
    text = path.read_text(encoding="utf-8").splitlines()
    return [(i + 1, line.strip()) for i, line in enumerate(text) if line.strip()]


def _resolve(path: Path, line: str, candidates: list[Path], where: str) -> Path:
    for c in candidates:
        if c.is_file() and _is_image(c):
            return c
    raise VisAlignLayoutError(
        f"{where}: image {line!r} not found (looked for {', '.join(str(c) for c in candidates)})"
    )


def _train_rows(base: Path) -> list[tuple]:
    rows = []
    for folder, split in (("final_train", "train"), ("final_eval", "val")):
        for num, cls in enumerate(CLASSES):
            listing = base / "train_split_filenames" / folder / f"{cls}.txt"
            for lineno, line in _lines(listing):
                source, _, name = line.rpartition("/")
                where = f"{listing}:{lineno}"
                if not name:
                    raise VisAlignLayoutError(f"{where}: empty file name in {line!r}")
                files = base / "train_files"
                candidates = [files / name, files / source / name] if source else [files / name]
                rows.append((split, cls, num, str(_resolve(listing, line, candidates, where))))
    return rows


def _gold_vector(value, source: str, key: str) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise VisAlignLayoutError(f"{source}: {key!r}: not a list of numbers: {value!r}") from None
    if v.shape != (len(GOLD_COLUMNS),) or not np.isfinite(v).all() or (v < 0).any() or v.sum() <= 0:
        raise VisAlignLayoutError(
            f"{source}: {key!r}: expected {len(GOLD_COLUMNS)} non-negative numbers with a "
            f"positive sum ({', '.join(CLASSES)}, abstain), got {v.tolist()}"
        )
    return v / v.sum()


def read_gold(path: str | Path, *, trusted: bool = False) -> dict[str, np.ndarray]:
    """File name -> normalised 11-way gold distribution, from a CSV, a JSON or (`trusted`) a
    pickle (`labels.pk`, whose values may be lists, arrays or tensors)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: VisAlign gold-label file not found")
    if path.suffix == ".csv":
        df = pd.read_csv(path, dtype={"file_name": str})
        cols = [*CLASSES, ABSTAIN]
        missing = [c for c in ["file_name", *cols] if c not in df.columns]
        if missing:
            raise VisAlignLayoutError(f"{path}: missing column(s) {missing}; found {list(df)}")
        raw = {str(r["file_name"]): (r[cols].to_numpy(), f"line {i + 2}") for i, r in df.iterrows()}
        dup = df["file_name"].duplicated()
        if dup.any():
            raise VisAlignLayoutError(
                f"{path}: file_name {df.loc[dup, 'file_name'].iloc[0]!r} listed twice"
            )
    elif path.suffix == ".json":
        raw = {str(k): (v, k) for k, v in json.loads(path.read_text()).items()}
    elif path.suffix in (".pk", ".pkl", ".pickle"):
        if not trusted:
            raise VisAlignLayoutError(
                f"{path}: a pickle runs code when it is read; set the definer option "
                "'trusted: true' if you trust this file, or export it to labels.csv "
                f"(file_name, {', '.join(CLASSES)}, abstain) or labels.json"
            )
        with path.open("rb") as f:
            data = pickle.load(f)  # noqa: S301 (trusted by the config)
        raw = {str(k): (v.tolist() if hasattr(v, "tolist") else v, k) for k, v in data.items()}
    else:
        raise VisAlignLayoutError(f"{path}: gold labels must be .csv, .json or .pk")
    return {k: _gold_vector(v, str(path), str(where)) for k, (v, where) in raw.items()}


def _gold_file(base: Path, labels: str | None) -> Path:
    if labels:
        return base / labels
    for name in LABEL_FILES:
        if (base / "open_test_set" / name).is_file():
            return base / "open_test_set" / name
    raise FileNotFoundError(
        f"{base / 'open_test_set'}: none of {', '.join(LABEL_FILES)} found (the gold labels)"
    )


def _test_rows(base: Path, labels: str | None, trusted: bool) -> pd.DataFrame:
    test = base / "open_test_set"
    gold_path = _gold_file(base, labels)
    gold = read_gold(gold_path, trusted=trusted)
    rows, seen = [], {}
    for category, group in GROUPS.items():
        listing = test / "label" / f"category{category}.txt"
        if not listing.is_file():
            log.warning("%s: not found; the open test set has no category %d", listing, category)
            continue
        for lineno, line in _lines(listing):
            where = f"{listing}:{lineno}"
            name = line.rpartition("/")[2]
            if name in seen:
                raise VisAlignLayoutError(f"{where}: {name!r} is also listed at {seen[name]}")
            seen[name] = where
            if name not in gold:
                raise VisAlignLayoutError(f"{where}: {name!r} has no gold label in {gold_path}")
            path = _resolve(listing, line, [test / line, test / name], where)
            g = gold[name]
            rows.append((category, group, name, str(path), *g))
    if not rows:
        raise FileNotFoundError(f"{test / 'label'}: no category1..8.txt lists found")
    df = pd.DataFrame(rows, columns=["category", "group", "file_name", "im_path", *GOLD_COLUMNS])
    labels_all = np.asarray([*CLASSES, ABSTAIN], dtype=object)
    majority = df[list(GOLD_COLUMNS)].to_numpy().argmax(axis=1)  # first maximum: a class
    df.insert(0, "split", "test")
    df.insert(1, "class", labels_all[majority])
    df.insert(2, "class_num", majority)
    return df


@register("visalign")
def visalign(
    raw: Path,
    root: str = ".",
    part: str = "train",
    labels: str | None = None,
    trusted: bool = False,
) -> pd.DataFrame:
    """The VisAlign folder `<raw>/<root>` as a dirmap: `part` "train" (train and val splits)
    or "open_test" (see the module docstring); `labels` names the gold file relative to
    `<raw>/<root>` (default: open_test_set/labels.csv, .json, then .pk)."""
    base = raw / root
    if part == "train":
        df = pd.DataFrame(_train_rows(base), columns=["split", "class", "class_num", "im_path"])
    elif part == "open_test":
        df = _test_rows(base, labels, trusted)
    else:
        raise ValueError(f"visalign definer: part {part!r}: expected 'train' or 'open_test'")
    log.info("VisAlign %s: %d images", part, len(df))
    return df
