"""Stage 3: build an ImageFolder (`<split>/<class>/<file>` plus `dirmap.csv`) from a recipe."""

from __future__ import annotations

import logging
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from lwise.core.atomic import atomic_path
from lwise.core.config import Section
from lwise.core.logs import progress
from lwise.data import dirmap
from lwise.data.imaging import FORMATS, RESIZE_MODES, load_rgb, resize

log = logging.getLogger(__name__)

SKIPPED_COLUMNS = ["split", "class", "im_path", "error"]


@dataclass(frozen=True)
class BuildOptions(Section):
    """How to turn a recipe into an ImageFolder (a dataset's `build` section; defaults in the
    schema): `BuildOptions.from_config({"classes": ["cat", "dog"]})`."""

    SECTION = "build"

    classes: list[str] | None
    classes_inclusive: bool  # match class names by substring
    n_per_class: dict[str, int]  # split -> images per class
    oversample: bool
    resize: str | None  # None, "squash" or "crop"
    size: tuple[int, int] | None
    format: str | None  # None keeps each file's format
    jpeg_quality: int
    seed: int

    def __post_init__(self):
        if isinstance(self.size, int):
            object.__setattr__(self, "size", (self.size, self.size))
        elif isinstance(self.size, list):
            object.__setattr__(self, "size", tuple(self.size))
        if self.resize is not None and self.resize not in RESIZE_MODES:
            raise ValueError(f"resize {self.resize!r}: expected one of {RESIZE_MODES} or null")
        if self.resize is not None and self.size is None:
            raise ValueError("resize needs 'size'")
        if self.format is not None and self.format not in FORMATS:
            raise ValueError(f"format {self.format!r}: expected one of {sorted(FORMATS)} or null")


def select_classes(df: pd.DataFrame, names: list[str], inclusive: bool) -> pd.DataFrame:
    """Keep the named classes (or those containing a name) and renumber 0..K-1 by sorted name.

    The old number goes to `orig_class_num` unless that column already holds a finer label
    (ImageNet's 1000-way index), which is kept.
    """
    if inclusive:
        keep = df["class"].map(lambda c: any(n in c for n in names))
    else:
        unknown = sorted(set(names) - set(df["class"]))
        if unknown:
            raise ValueError(
                f"class(es) {unknown} not in the dirmap; known: {sorted(set(df['class']))}"
            )
        keep = df["class"].isin(names)
    df = df[keep].copy()
    if df.empty:
        raise ValueError(f"no class matches {names}")
    if "orig_class_num" not in df.columns:
        df["orig_class_num"] = df["class_num"]
    df["class_num"] = df["class"].map({c: i for i, c in enumerate(sorted(set(df["class"])))})
    return df


def subsample(df: pd.DataFrame, n_per_class: dict[str, int], seed: int) -> pd.DataFrame:
    """At most n images per class in each listed split, drawn reproducibly."""
    parts = []
    for (split, cls), group in df.groupby(["split", "class_num"], sort=True):
        n = n_per_class.get(split)
        if n is not None and len(group) > n:
            rng = np.random.default_rng([seed, dirmap.SPLITS.index(split), int(cls)])
            group = group.iloc[np.sort(rng.choice(len(group), size=n, replace=False))]
        parts.append(group)
    return pd.concat(parts)


def oversample(df: pd.DataFrame, seed: int) -> pd.DataFrame:
    """Within each split, add drawn-with-replacement copies of minority classes up to the majority.

    Unlike the reference (sklearn `resample` of the whole class, which can drop originals), every
    original stays; `copy` numbers the extra rows (0 for originals).
    """
    df = df.assign(copy=0)
    parts = [df]
    for split, rows in df.groupby("split", sort=True):
        counts = rows.groupby("class_num").size()
        for cls, count in counts.items():
            extra = int(counts.max() - count)
            if extra:
                rng = np.random.default_rng([seed, dirmap.SPLITS.index(split), int(cls), 1])
                group = rows[rows["class_num"] == cls]
                drawn = group.iloc[rng.choice(len(group), size=extra, replace=True)].copy()
                drawn["copy"] = drawn.groupby("im_path").cumcount() + 1
                parts.append(drawn)
    return pd.concat(parts, ignore_index=True)


def destinations(df: pd.DataFrame, new_ext: str | None) -> pd.Series:
    """`<split>/<class>/<name>`; copies get `__copyN`, clashing names get `__K`."""
    out, used = [], set()
    for split, cls, path, copy in zip(
        df["split"], df["class"], df["im_path"], df["copy"], strict=True
    ):
        p = Path(path)
        stem = p.stem + (f"__copy{copy}" if copy else "")
        ext = new_ext or p.suffix
        name, k = f"{split}/{cls}/{stem}{ext}", 1
        while name.lower() in used:
            k += 1
            name = f"{split}/{cls}/{stem}__{k}{ext}"
        used.add(name.lower())
        out.append(name)
    return pd.Series(out, index=df.index)


def _decode(src: Path) -> tuple[Image.Image | None, bool, str | None]:
    """Decode once; an undecodable file is reported (third item), never fatal."""
    try:
        img, changed = load_rgb(src)
        return img, changed, None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return None, False, f"{type(err).__name__}: {err}"


def _write_one(src: Path, dests: list[Path], opts: BuildOptions) -> str | None:
    """Write every destination of `src` (an original and its copies); return a decode error."""
    img, changed, error = _decode(src)
    if error:
        return error
    new_format = opts.format is not None and FORMATS[opts.format] != src.suffix.lower()
    if opts.resize is None and not changed and not new_format:
        for dest in dests:  # nothing to transform: link (or copy) the bytes
            try:
                os.link(src, dest)
            except OSError:
                shutil.copyfile(src, dest)
        return None
    if opts.resize:
        img = resize(img, opts.size, opts.resize)
    for dest in dests:
        kwargs = {"quality": opts.jpeg_quality} if dest.suffix.lower() in (".jpg", ".jpeg") else {}
        img.save(dest, **kwargs)
    return None


def dataset_roots(raw_dir: str | os.PathLike, extra: list[str] | None = None) -> list[Path]:
    """Where a dataset's images may live: its raw folder, the local folders its sources link
    into it (as `download` places them), and folders the user lists (`image_roots`)."""
    raw = Path(raw_dir)
    linked = [p.resolve() for p in raw.iterdir() if p.is_symlink()] if raw.is_dir() else []
    return [raw, *linked, *(Path(p) for p in extra or [])]


def build(
    recipe_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    opts: BuildOptions,
    threads: int = 4,
    roots: list[Path] | None = None,
) -> pd.DataFrame:
    """Build the ImageFolder at `out_dir` atomically; unreadable images go to `skipped.csv`.

    With `roots` (see `dataset_roots`), an image outside them is an error, never copied."""
    recipe_csv, out_dir = Path(recipe_csv), Path(out_dir)
    df = dirmap.read(recipe_csv, roots=roots)
    if opts.classes:
        df = select_classes(df, opts.classes, opts.classes_inclusive)
    if opts.n_per_class:
        df = subsample(df, opts.n_per_class, opts.seed)
    df = oversample(df, opts.seed) if opts.oversample else df.assign(copy=0)
    df["dest"] = destinations(df, FORMATS[opts.format] if opts.format else None)

    with atomic_path(out_dir, directory=True) as tmp:
        jobs = {src: group["dest"].tolist() for src, group in df.groupby("im_path", sort=False)}
        for folder in {str(Path(d).parent) for d in df["dest"]}:
            (tmp / folder).mkdir(parents=True, exist_ok=True)

        def work(item):
            src, dests = item
            return src, _write_one(recipe_csv.parent / src, [tmp / d for d in dests], opts)

        errors = {}
        with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
            for src, err in progress(
                pool.map(work, jobs.items()), total=len(jobs), desc="imagefolder"
            ):
                if err:
                    errors[src] = err
                    log.warning("skipped %s: %s", src, err)
        bad = df["im_path"].isin(errors)
        skipped = df.loc[bad, ["split", "class", "im_path"]].drop_duplicates("im_path")
        skipped["error"] = skipped["im_path"].map(errors)
        skipped.to_csv(tmp / "skipped.csv", index=False, columns=SKIPPED_COLUMNS)

        out = df[~bad].copy()
        if "orig_im_path" not in out.columns:
            source = out["im_path"].map(lambda p: str(recipe_csv.parent / p))
            out["orig_im_path"] = dirmap.relative_to(source, out_dir)
        out["im_path"] = out.pop("dest")
        out = out.drop(columns=["copy"] if not opts.oversample else [])
        out = dirmap.write(out, tmp / "dirmap.csv")
    log.info(
        "built %s: %d images, %d skipped (listed in skipped.csv)", out_dir, len(out), len(skipped)
    )
    return out
