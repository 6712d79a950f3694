"""Human attention input for the attention stage: masks, reasonability labels, assessments.

Masks come as one image per dataset image (any size and format; non-zero pixels are attended),
in a folder whose relative paths (without extension) or file names match the dirmap's images, or
as GRADIA's JSON lists of `{"img": path, "attention": [[0/1, ...], ...]}` (Gao et al., CSCW 2022;
repository file `GRADIA.py`, `generate_path_to_attentions`), with its update files (entries
replace or add masks) and removal files (entries drop masks) applied in order. Images are
matched as GRADIA.py does, by file name, or by a longer relative path where names repeat.

Every problem names the file and the entry (or row) and the field at fault.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from lwise.core.atomic import atomic_path
from lwise.data import dirmap
from lwise.data.loading import eval_transform

log = logging.getLogger(__name__)

__all__ = [
    "ASSESSMENTS",
    "ImageIndex",
    "MaskError",
    "Masks",
    "REASONABILITY",
    "fit_masks",
    "load_masks",
    "read_assessment",
    "read_reasonability",
    "write_synthetic_masks",
]

# The four cells of GRADIA's reasonability matrix, as `reasonablity_val.json` spells them.
REASONABILITY = (
    "Reasonable Accurate",
    "Reasonable Inaccurate",
    "Unreasonable Accurate",
    "Unreasonable Inaccurate",
)
ASSESSMENTS = ("reasonable", "unreasonable")
ASPECT_TOLERANCE = 0.02


class MaskError(ValueError):
    """Bad human attention input; the message names the file, the entry and the problem."""


def _keys(path: str) -> list[str]:
    """Ways an image may be named: the relative path, without extension, file name, stem."""
    p = PurePosixPath(str(path).replace("\\", "/"))
    return list(dict.fromkeys([str(p), str(p.with_suffix("")), p.name, p.stem]))


class ImageIndex:
    """Finds a dirmap row from an image name: its `im_path` (or `orig_im_path`), with or without
    extension, or its file name or stem (GRADIA.py keys masks by file name)."""

    def __init__(self, df: pd.DataFrame):
        self.df = df.reset_index(drop=True)
        self._rows: dict[str, set[int]] = {}
        columns = [c for c in ("im_path", "orig_im_path") if c in self.df.columns]
        for col in columns:
            for i, path in enumerate(self.df[col]):
                if isinstance(path, str):
                    for key in _keys(path):
                        self._rows.setdefault(key, set()).add(i)

    def lookup(self, name: object, where: str) -> int:
        if not isinstance(name, str) or not name.strip():
            raise MaskError(f"{where}: image name {name!r} is not a non-empty string")
        for key in _keys(name.strip()):
            rows = self._rows.get(key)
            if rows is None:
                continue
            if len(rows) > 1:
                paths = sorted(self.df.loc[sorted(rows), "im_path"])[:3]
                raise MaskError(
                    f"{where}: image {name!r} matches {len(rows)} images ({paths}, ...); "
                    "give the path relative to the dirmap"
                )
            return next(iter(rows))
        raise MaskError(f"{where}: unknown image {name!r}: no image of that path or name")


@dataclass
class Masks:
    """Binary masks by dirmap row (at their own size) and where each came from."""

    arrays: dict[int, np.ndarray] = field(default_factory=dict)
    origins: dict[int, str] = field(default_factory=dict)

    def set(self, row: int, array: np.ndarray, origin: str) -> None:
        self.arrays[row] = array
        self.origins[row] = origin

    def drop(self, row: int) -> None:
        del self.arrays[row]
        del self.origins[row]


def _binary(values: np.ndarray, where: str) -> np.ndarray:
    if values.ndim != 2 or 0 in values.shape:
        raise MaskError(f"{where}: wrong shape {values.shape}: a mask is a 2-D array of pixels")
    mask = values > 0
    if not mask.any():
        raise MaskError(f"{where}: empty mask (no pixel > 0)")
    return mask


def _read_mask_image(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
            values = np.asarray(img, dtype=np.float64)
            if values.ndim == 3:  # any colour channel (not alpha) counts
                colour = values.shape[2] - 1 if img.mode.endswith("A") else values.shape[2]
                values = values[..., :colour].max(-1)
    except (UnidentifiedImageError, OSError) as err:
        raise MaskError(f"{path}: not a readable image ({err})") from err
    return _binary(values, str(path))


def _read_folder(folder: Path, index: ImageIndex, masks: Masks) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith("."))
    if not files:
        raise MaskError(f"{folder}: no mask images found")
    for path in files:
        rel = path.relative_to(folder).as_posix()
        row = index.lookup(rel, f"{path}")
        if row in masks.arrays:
            raise MaskError(
                f"{path}: a second mask for image {index.df.at[row, 'im_path']!r} "
                f"(the first is {masks.origins[row]})"
            )
        masks.set(row, _read_mask_image(path), str(path))


def _json_entries(path: Path, need_attention: bool) -> list[tuple[str, dict]]:
    try:
        with open(path) as f:
            entries = json.load(f)
    except (OSError, json.JSONDecodeError) as err:
        raise MaskError(f"{path}: cannot read JSON ({err})") from err
    if not isinstance(entries, list):
        raise MaskError(f"{path}: expected a list of {{img, attention}} objects")
    out = []
    for i, entry in enumerate(entries):
        where = f"{path} entry {i}"
        if not isinstance(entry, Mapping) or "img" not in entry:
            raise MaskError(f"{where}: missing field 'img'")
        if need_attention and "attention" not in entry:
            raise MaskError(f"{where}: missing field 'attention'")
        out.append((where, entry))
    return out


def _json_mask(where: str, entry: Mapping) -> np.ndarray:
    try:
        values = np.asarray(entry["attention"], dtype=np.float64)
    except (ValueError, TypeError) as err:
        raise MaskError(f"{where}: field 'attention' has the wrong shape or type ({err})") from err
    return _binary(values, f"{where} field 'attention'")


def load_masks(
    source: str | os.PathLike,
    index: ImageIndex,
    *,
    updates: Sequence[str | os.PathLike] = (),
    removals: Sequence[str | os.PathLike] = (),
) -> Masks:
    """Masks from a folder of mask images or a GRADIA JSON, then each update JSON (entries
    replace or add masks) and each removal JSON (entries drop masks), in order, as GRADIA.py's
    `generate_path_to_attentions` applies `attention_val_update.json` and
    `attention_val_remove.json`."""
    source = Path(source)
    masks = Masks()
    if source.is_dir():
        _read_folder(source, index, masks)
    elif source.is_file():
        for where, entry in _json_entries(source, need_attention=True):
            row = index.lookup(entry["img"], f"{where} field 'img'")
            masks.set(row, _json_mask(where, entry), where)
    else:
        raise MaskError(f"{source}: attention masks not found (a folder of images or a JSON)")
    for path in updates:
        for where, entry in _json_entries(Path(path), need_attention=True):
            row = index.lookup(entry["img"], f"{where} field 'img'")
            masks.set(row, _json_mask(where, entry), where)
    for path in removals:
        for where, entry in _json_entries(Path(path), need_attention=False):
            row = index.lookup(entry["img"], f"{where} field 'img'")
            if row not in masks.arrays:
                raise MaskError(
                    f"{where}: removes image {entry['img']!r}, which has no mask at this point"
                )
            masks.drop(row)
    if not masks.arrays:
        raise MaskError(f"{source}: no masks left after the updates and removals")
    return masks


def fit_masks(
    masks: Masks, df: pd.DataFrame, root: str | os.PathLike, size: int
) -> dict[int, torch.Tensor]:
    """Each mask as the model sees its image (row `row` of `df`, relative to `root`): a bool
    [size, size] tensor.

    A mask of another size than its image is stretched to it when the aspect ratios agree
    (within 2 %), then goes through the images' transform (shorter side to `size`, centre crop).
    """
    transform = eval_transform(size)
    out = {}
    for row, mask in masks.arrays.items():
        where = masks.origins[row]
        im_path = Path(root) / df.at[row, "im_path"]
        with Image.open(im_path) as img:
            width, height = img.size
        h, w = mask.shape
        if (w, h) != (width, height):
            if abs((w / h) / (width / height) - 1) > ASPECT_TOLERANCE:
                raise MaskError(
                    f"{where}: wrong shape: mask is {w}x{h} but image {im_path} is "
                    f"{width}x{height} (aspect ratios differ)"
                )
        pil = Image.fromarray(mask.astype(np.uint8) * 255, mode="L")
        if (w, h) != (width, height):
            pil = pil.resize((width, height), Image.Resampling.BILINEAR)
        fitted = transform(pil)[0] > 0.5
        if not fitted.any():
            raise MaskError(
                f"{where}: mask lies outside the {size}x{size} centre crop of its image"
            )
        out[row] = fitted
    return out


def _label_table(path: Path, column: str) -> list[tuple[str, object, object]]:
    """(where, image, label) from a JSON dict {image: label}, a JSON list of {img, label}
    objects, or a CSV with columns image (or im_path or img) and `column`."""
    if not path.is_file():
        raise MaskError(f"{path}: file not found")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise MaskError(f"{path}: cannot read JSON ({err})") from err
        if isinstance(data, Mapping):
            return [(f"{path} key {k!r}", k, v) for k, v in data.items()]
        if isinstance(data, list):
            rows = []
            for i, entry in enumerate(data):
                if not isinstance(entry, Mapping) or "img" not in entry or "label" not in entry:
                    raise MaskError(f"{path} entry {i}: expected fields 'img' and 'label'")
                rows.append((f"{path} entry {i}", entry["img"], entry["label"]))
            return rows
        raise MaskError(f"{path}: expected a JSON object or list")
    table = pd.read_csv(path, dtype=str)
    name_col = next((c for c in ("image", "im_path", "img") if c in table.columns), None)
    if name_col is None or column not in table.columns:
        raise MaskError(
            f"{path}: needs columns 'image' (or im_path/img) and {column!r}; "
            f"found {list(table.columns)}"
        )
    return [
        (f"{path} line {i + 2}", table.at[i, name_col], table.at[i, column])
        for i in range(len(table))
    ]


def _canonical(label: object, choices: Iterable[str]) -> str | None:
    text = " ".join(str(label).replace("_", " ").replace("-", " ").split()).lower()
    codes = {"".join(w[0] for w in c.split()).lower(): c for c in choices}
    for choice in choices:
        if text == choice.lower():
            return choice
    return codes.get(text)


def read_reasonability(path: str | os.PathLike, index: ImageIndex) -> dict[int, str]:
    """Per-image reasonability labels (one of `REASONABILITY`, or RA/RI/UA/UI, any case) by
    dirmap row, from GRADIA's `reasonablity_val.json` ({image: label}) or a CSV with columns
    image and label."""
    out = {}
    for where, name, label in _label_table(Path(path), "label"):
        canonical = _canonical(label, REASONABILITY)
        if canonical is None:
            raise MaskError(
                f"{where}: label {label!r} is not one of {list(REASONABILITY)} (or RA/RI/UA/UI)"
            )
        out[index.lookup(name, where)] = canonical
    return out


def read_assessment(path: str | os.PathLike, index: ImageIndex) -> dict[int, str]:
    """Human judgements of the model's attention ("reasonable"/"unreasonable") by row, from
    GRADIA's list of {img, label} (entries with an empty img are skipped, as GRADIA.py does) or a
    CSV with columns image and label."""
    out = {}
    skipped = 0
    for where, name, label in _label_table(Path(path), "label"):
        if name == "" or (isinstance(name, float) and np.isnan(name)):
            skipped += 1
            continue
        canonical = _canonical(label, ASSESSMENTS)
        if canonical is None:
            raise MaskError(f"{where}: label {label!r} is not one of {list(ASSESSMENTS)}")
        out[index.lookup(name, where)] = canonical
    if skipped:
        log.info("%s: skipped %d entries without an image name", path, skipped)
    return out


def write_synthetic_masks(
    dirmap_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    splits: Sequence[str] = ("val", "test"),
    contrast: float = 0.25,
) -> int:
    """SYNTHETIC masks for datasets without human ones: the pixels that differ from the image's
    background (the median of its border pixels) by more than `contrast` of the full grey range;
    for the bundled digits, the stroke pixels. One PNG per image of `splits`, at the image's
    `im_path` under `out_dir`. Images where nothing stands out get no mask. Returns the count."""
    df = dirmap.read(dirmap_csv)
    root = Path(dirmap_csv).parent
    rows = df[df["split"].isin(list(splits))]
    written = 0
    with atomic_path(out_dir, directory=True) as tmp:
        for im_path in rows["im_path"]:
            with Image.open(root / im_path) as img:
                grey = np.asarray(img.convert("L"), dtype=np.float64)
            border = np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])
            mask = np.abs(grey - np.median(border)) > contrast * 255
            if not mask.any():
                continue
            dest = tmp / PurePosixPath(im_path).with_suffix(".png")
            dest.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(dest)
            written += 1
    log.info("wrote %d synthetic masks (%d images of splits %s)", written, len(rows), splits)
    return written
