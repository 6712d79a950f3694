"""Stage 2: dataset definers, each turning a raw folder into a dirmap (recipe).

A definer returns a DataFrame whose `im_path` holds absolute paths; the caller rebases them onto
the folder of the CSV it writes. Class numbers come from sorted class names unless the dataset
fixes them (ImageNet indices), and one numbering is shared by all splits.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from lwise.data import dirmap

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm")

DEFINERS: dict[str, Callable[..., pd.DataFrame]] = {}


def register(name: str):
    def deco(fn):
        DEFINERS[name] = fn
        return fn

    return deco


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def number_classes(names: Iterable[str]) -> dict[str, int]:
    """0..K-1 by sorted class name."""
    return {name: i for i, name in enumerate(sorted(set(names)))}


@register("imagefolder")
def imagefolder(raw: Path, root: str = ".", splits: dict[str, str] | None = None) -> pd.DataFrame:
    """Walk `<raw>/<root>/<split folder>/<class>/<file>`.

    `splits` maps folder names to split names (default: train, val and test as they are). Unlike
    the reference `imagefolder_style_df.py`, which numbers each split on its own (and so
    mislabels when a split lacks a class), one numbering covers all splits.
    """
    base = raw / root
    splits = splits or {s: s for s in dirmap.SPLITS}
    rows = []
    for folder, split in splits.items():
        split_dir = base / folder
        if not split_dir.is_dir():
            continue
        for class_dir in sorted(p for p in split_dir.iterdir() if p.is_dir()):
            for f in sorted(class_dir.rglob("*")):
                if f.is_file() and _is_image(f):
                    rows.append((split, class_dir.name, str(f)))
    if not rows:
        raise FileNotFoundError(
            f"{base}: no images found under any of the split folders {sorted(splits)}"
        )
    df = pd.DataFrame(rows, columns=["split", "class", "im_path"])
    df["class_num"] = df["class"].map(number_classes(df["class"]))
    return df


def _index_images(folder: Path) -> dict[str, Path]:
    """Image files under `folder` by file stem (HAM10000 spreads them over two zips)."""
    return {p.stem: p for p in folder.rglob("*") if p.is_file() and _is_image(p)}


@register("ham10000")
def ham10000(
    raw: Path,
    metadata: str = "HAM10000_metadata.csv",
    images: str = ".",
    val_fraction: float = 0.3,
    seed: int = 42,
) -> pd.DataFrame:
    """HAM10000 from its metadata table: class = `dx`, 7 classes numbered alphabetically.

    Split by lesion, so all images of one lesion share a split; the defaults (30 % val, seed 42)
    are those of L-WISE `define_ham10000_dataset.py`.
    """
    from sklearn.model_selection import train_test_split

    path = raw / metadata
    sep = "\t" if path.suffix == ".tab" else ","
    meta = pd.read_csv(path, sep=sep)
    need = {"lesion_id", "image_id", "dx"}
    if not need <= set(meta.columns):
        raise ValueError(f"{path}: expected columns {sorted(need)}, found {list(meta.columns)}")
    files = _index_images(raw / images)
    missing = meta.loc[~meta["image_id"].isin(files), "image_id"]
    if len(missing):
        raise FileNotFoundError(
            f"{path}: {len(missing)} image_id(s) have no image file under {raw / images}, "
            f"e.g. {list(missing[:3])}"
        )
    _, val_lesions = train_test_split(
        meta["lesion_id"].unique(), test_size=val_fraction, random_state=seed
    )
    df = meta.assign(
        split=meta["lesion_id"].isin(set(val_lesions)).map({True: "val", False: "train"}),
        im_path=meta["image_id"].map(lambda i: str(files[i])),
        **{"class": meta["dx"]},
    )
    df["class_num"] = df["class"].map(number_classes(df["class"]))
    return df


@register("mhist")
def mhist(raw: Path, annotations: str = "annotations.csv", images: str = "images") -> pd.DataFrame:
    """MHIST: `Partition` gives the split, `Majority Vote Label` the class (hp 0, ssa 1).

    The annotator-count column is kept as is.
    """
    path = raw / annotations
    ann = pd.read_csv(path)
    need = {"Image Name", "Majority Vote Label", "Partition"}
    if not need <= set(ann.columns):
        raise ValueError(f"{path}: expected columns {sorted(need)}, found {list(ann.columns)}")
    df = ann.assign(
        split=ann["Partition"].str.strip().str.lower(),
        im_path=ann["Image Name"].map(lambda n: str(raw / images / n)),
        **{"class": ann["Majority Vote Label"].str.strip().str.lower()},
    )
    df["class_num"] = df["class"].map(number_classes(df["class"]))
    return df


# ImageNet-16 ("ImageNet animals"): inclusive ImageNet index ranges per superclass, superclass
# index = order here. From IMAGENET_16_RANGES in L-WISE's copy of robustness/tools/constants.py.
IMAGENET16 = {
    "dog": [(151, 268)],
    "house_cat": [(281, 285)],
    "frog": [(30, 32)],
    "turtle": [(33, 37)],
    "bird": [(80, 100), (127, 146)],
    "monkey": [(369, 382)],
    "fish": [0, 1, 389, (391, 397)],
    "crab": [(118, 121)],
    "insect": [(300, 320)],
    "lizard": [(38, 48)],
    "snake": [(52, 68)],
    "spider": [(72, 77)],
    "big_cat": [(286, 293)],
    "bear": [(294, 297)],
    "rodent": [(330, 333), 335, 336, 338],
    "antelope": [(351, 353)],
}
PRESETS = {"imagenet16": IMAGENET16}


def expand_indices(spec: Iterable[int | list | tuple]) -> list[int]:
    """`[0, [3, 5]]` -> `[0, 3, 4, 5]`: integers and inclusive [start, end] ranges."""
    out: list[int] = []
    for item in spec:
        if isinstance(item, list | tuple):
            if len(item) != 2 or item[0] > item[1]:
                raise ValueError(f"class range {item!r}: expected [start, end] with start <= end")
            out.extend(range(item[0], item[1] + 1))
        else:
            out.append(int(item))
    return out


@register("imagenet_subset")
def imagenet_subset(
    raw: Path,
    root: str = ".",
    class_index: str | None = None,
    preset: str | None = None,
    classes: list | None = None,
    superclasses: dict[str, list] | None = None,
    splits: dict[str, str] | None = None,
) -> pd.DataFrame:
    """A subset of ImageNet (`<root>/<split>/<wnid>/<file>`) from class indices or superclasses.

    `class_index` is Keras' `imagenet_class_index.json` ({"0": [wnid, name], ...}); without it
    the index is the wnid's rank among the sorted folder names (the standard ImageNet order).
    With superclasses (or `preset: imagenet16`), `class`/`class_num` are the superclass and
    `orig_class`/`orig_class_num` keep the 1000-way class. With `classes` alone, classes are
    renumbered by sorted original index.
    """
    base = raw / root
    splits = splits or {"train": "train", "val": "val"}
    if class_index:
        table = json.loads((raw / class_index).read_text())
        wnid_of = {int(k): v[0] for k, v in table.items()}
        name_of = {int(k): v[1] for k, v in table.items()}
    else:
        first = next((base / f for f in splits if (base / f).is_dir()), None)
        if first is None:
            raise FileNotFoundError(f"{base}: none of the split folders {sorted(splits)} exist")
        wnids = sorted(p.name for p in first.iterdir() if p.is_dir())
        wnid_of = dict(enumerate(wnids))
        name_of = dict(wnid_of)
    if preset:
        if preset not in PRESETS:
            raise ValueError(f"unknown ImageNet preset {preset!r}; known: {sorted(PRESETS)}")
        superclasses = PRESETS[preset]
    if superclasses:
        group = {
            i: (name, k)
            for k, (name, spec) in enumerate(superclasses.items())
            for i in expand_indices(spec)
        }
    elif classes:
        wanted = sorted(set(expand_indices(classes)))
        group = {i: (name_of[i], k) for k, i in enumerate(wanted)}
    else:
        raise ValueError("imagenet_subset needs 'preset', 'superclasses' or 'classes'")
    rows = []
    for folder, split in splits.items():
        for idx, (cls, cls_num) in group.items():
            class_dir = base / folder / wnid_of[idx]
            if not class_dir.is_dir():
                continue
            for f in sorted(class_dir.iterdir()):
                if f.is_file() and _is_image(f):
                    rows.append((split, cls, cls_num, name_of[idx], idx, str(f)))
    if not rows:
        raise FileNotFoundError(f"{base}: no images of the selected classes found")
    return pd.DataFrame(
        rows, columns=["split", "class", "class_num", "orig_class", "orig_class_num", "im_path"]
    )


@register("cub200")
def cub200(raw: Path, root: str = "CUB_200_2011") -> pd.DataFrame:
    """CUB-200-2011 from its own index files (images.txt, train_test_split.txt, classes)."""
    base = raw / root

    def table(name: str, cols: list[str]) -> pd.DataFrame:
        return pd.read_csv(base / name, sep=" ", names=cols, dtype=str)

    df = (
        table("images.txt", ["id", "file"])
        .merge(table("train_test_split.txt", ["id", "is_train"]), on="id")
        .merge(table("image_class_labels.txt", ["id", "label"]), on="id")
    )
    df = df.assign(
        split=df["is_train"].map({"1": "train", "0": "test"}),
        im_path=df["file"].map(lambda f: str(base / "images" / f)),
        **{"class": df["file"].str.split("/").str[0]},
    )
    # CUB numbers its folders 001..200, so sorted names give label - 1.
    df["class_num"] = df["class"].map(number_classes(df["class"]))
    return df.drop(columns=["file", "is_train", "label", "id"])


@register("recipe")
def recipe(raw: Path, path: str) -> pd.DataFrame:
    """A ready dirmap shipped with (or next to) the data: `im_path` relative to that CSV."""
    csv = raw / path
    df = dirmap.read(csv)
    df["im_path"] = df["im_path"].map(lambda p: str(csv.parent / p))
    return df


def define(
    kind: str, raw_dir: str | os.PathLike, out_csv: str | os.PathLike, **options
) -> pd.DataFrame:
    """Run definer `kind` on `raw_dir` and write the dirmap to `out_csv` (im_path relative)."""
    if kind not in DEFINERS:
        raise ValueError(f"unknown definer {kind!r}; known: {sorted(DEFINERS)}")
    df = DEFINERS[kind](Path(raw_dir), **options)
    df["im_path"] = dirmap.relative_to(df["im_path"], Path(out_csv).parent)
    df = dirmap.write(df, out_csv)
    counts = df.groupby("split").size().to_dict()
    log.info(
        "%s: %d images, %d classes, per split %s", out_csv, len(df), df["class"].nunique(), counts
    )
    return df


from lwise.data import visalign_layout  # noqa: E402, F401
