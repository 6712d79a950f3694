"""The VisAlign test set of a dataset: the open test set, or a synthetic one.

`build_testset` writes `<out>/dirmap.csv`, one row per test image: split `test`, `class` and
`class_num` (the gold majority; `abstain` is index K), `im_path`, `category`, `group`
(Must-Act, Must-Abstain, Uncertain), `file_name` (the leaderboard's key), the (K+1)-way gold
distribution in `gold_<class>` and `gold_abstain`, and `synthetic`.

- `visalign`: a dataset in VisAlign's layout (`lwise.data.visalign_layout`, `part: open_test`)
  with its crowd-sourced gold labels.
- `synthetic`: for any other dataset, SYNTHETIC data in VisAlign's three groups from the
  dataset's validation images: category 1 (Must-Act) the images as they are, gold one-hot;
  category 4 (Must-Abstain) generated images of no class (noise, flat colours, stripes,
  checkerboards), gold abstain; category 8 (Uncertain) images blurred and noised at a random
  severity s, whose gold distributions are the answers of simulated raters: abstain with
  probability `abstain_max`·s, else the true class with probability 1 − s + s/K, else a
  uniformly wrong class. This observer model is ours, not VisAlign's crowd; every output fed by
  it is marked synthetic.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter

from lwise.core.atomic import atomic_path
from lwise.core.logs import progress
from lwise.data import dirmap
from lwise.data.definers import define
from lwise.data.imaging import to_rgb

__all__ = ["KINDS", "build_testset", "gold_columns", "synthetic_gold"]

log = logging.getLogger(__name__)

KINDS = ("visalign", "synthetic")
ABSTAIN = "abstain"


def gold_columns(classes) -> list[str]:
    return [f"gold_{c}" for c in (*classes, ABSTAIN)]


def synthetic_gold(
    severity: np.ndarray, true: np.ndarray, k: int, raters: int, abstain_max: float, rng
) -> np.ndarray:
    """(n, k+1) rater answer fractions for corrupted images of class `true` at `severity`."""
    s = np.clip(np.asarray(severity, dtype=float), 0, 1)
    p_abstain = abstain_max * s
    p_true = (1 - p_abstain) * (1 - s + s / k)
    p_other = (1 - p_abstain - p_true) / max(k - 1, 1)
    out = np.empty((len(s), k + 1))
    for i in range(len(s)):
        p = np.full(k + 1, p_other[i])
        p[true[i]], p[k] = p_true[i], p_abstain[i]
        out[i] = rng.multinomial(raters, p / p.sum()) / raters
    return out


def _far_image(kind: int, size: tuple[int, int], rng) -> Image.Image:
    w, h = size
    if kind == 0:  # uniform noise
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    elif kind == 1:  # a flat colour
        arr = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (h, w, 3)).copy()
    elif kind == 2:  # stripes
        period = int(rng.integers(2, max(3, w // 4)))
        band = (np.arange(w) // period) % 2
        colours = rng.integers(0, 256, (2, 3), dtype=np.uint8)
        arr = np.broadcast_to(colours[band][None], (h, w, 3)).copy()
    else:  # a checkerboard
        period = int(rng.integers(2, max(3, w // 4)))
        cells = ((np.arange(h)[:, None] // period) + (np.arange(w)[None] // period)) % 2
        arr = rng.integers(0, 256, (2, 3), dtype=np.uint8)[cells]
    return Image.fromarray(arr)


def _corrupt(img: Image.Image, s: float, rng) -> Image.Image:
    blurred = img.filter(ImageFilter.GaussianBlur(radius=float(s) * min(img.size) / 8))
    arr = np.asarray(blurred, dtype=float) + rng.normal(0, 128 * s, (img.size[1], img.size[0], 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _synthetic(imagefolder_csv: Path, out: Path, cfg: Mapping[str, Any]) -> pd.DataFrame:
    df = dirmap.read(imagefolder_csv)
    names = df.drop_duplicates("class_num").sort_values("class_num")["class"].tolist()
    k = len(names)
    split = "val" if (df["split"] == "val").any() else "test"
    pool = df[df["split"] == split].reset_index(drop=True)
    n = int(cfg["per_category"])
    if len(pool) < 2 * n:
        raise ValueError(
            f"{imagefolder_csv}: {len(pool)} {split} images, fewer than the 2 × {n} that "
            "visalign.synthetic.per_category asks for"
        )
    rng = np.random.default_rng(int(cfg["seed"]))
    chosen = pool.iloc[rng.permutation(len(pool))[: 2 * n]].reset_index(drop=True)
    root = imagefolder_csv.parent
    (out / "images").mkdir(parents=True)
    rows = []

    def add(img: Image.Image, category: int, group: str, gold: np.ndarray, **extra):
        name = f"c{category}_{len(rows):05d}.png"
        img.save(out / "images" / name)
        golds = dict(zip(gold_columns(names), gold, strict=True))
        rows.append({"im_path": f"images/{name}", "category": category, "group": group,
                     "file_name": name, **golds, **extra})  # fmt: skip

    for i in progress(range(n), desc="synthetic VisAlign test set"):
        with Image.open(root / chosen.loc[i, "im_path"]) as img:
            clean = to_rgb(img).copy()
        add(clean, 1, "Must-Act", np.eye(k + 1)[chosen.loc[i, "class_num"]], severity=0.0)
        add(_far_image(i % 4, clean.size, rng), 4, "Must-Abstain", np.eye(k + 1)[k], severity=1.0)
    severities = rng.uniform(float(cfg["min_severity"]), 1.0, n)
    true = chosen.loc[n:, "class_num"].to_numpy()
    golds = synthetic_gold(severities, true, k, int(cfg["raters"]), float(cfg["abstain_max"]), rng)
    for j in range(n):
        with Image.open(root / chosen.loc[n + j, "im_path"]) as img:
            corrupted = _corrupt(to_rgb(img), severities[j], rng)
        add(corrupted, 8, "Uncertain", golds[j], severity=float(severities[j]))
    table = pd.DataFrame(rows)
    gold = table[gold_columns(names)].to_numpy()
    labels = np.asarray([*names, ABSTAIN], dtype=object)
    table.insert(0, "split", "test")
    table.insert(1, "class", labels[gold.argmax(axis=1)])
    table.insert(2, "class_num", gold.argmax(axis=1))
    table["synthetic"] = True
    return table


def build_testset(
    kind: str,
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    options: Mapping[str, Any] | None = None,
    synthetic: Mapping[str, Any] | None = None,
) -> pd.DataFrame:
    """Write the test set into `out_dir` (replaced atomically) and return its dirmap.

    `kind` "visalign": `source` is the dataset's raw folder and `options` the definer's
    (root, labels, trusted). "synthetic": `source` is the dataset's ImageFolder and `synthetic`
    the `visalign.synthetic` settings (per_category, raters, abstain_max, min_severity, seed).
    """
    if kind not in KINDS:
        raise ValueError(f"test set kind {kind!r}: expected one of {KINDS}")
    with atomic_path(out_dir, directory=True) as tmp:
        tmp.mkdir(parents=True, exist_ok=True)
        csv = tmp / "dirmap.csv"
        if kind == "visalign":
            opts = {k: v for k, v in dict(options or {}).items() if k != "part"}
            table = define("visalign", source, csv, part="open_test", **opts)
            table["synthetic"] = False
        else:
            table = _synthetic(Path(source) / "dirmap.csv", tmp, dict(synthetic or {}))
        table = dirmap.write(table, csv)
    log.info(
        "VisAlign test set (%s): %d images, per category %s", kind, len(table),
        table.groupby("category").size().to_dict(),
    )  # fmt: skip
    return table
