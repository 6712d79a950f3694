"""Stage 6: the natural stimuli: the unperturbed images, preprocessed and encoded exactly like
the enhanced ones (L-WISE `enhance.py --save_originals`), under the same keys."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from torch.utils.data import DataLoader
from tqdm import tqdm

from lwise.core.atomic import atomic_path
from lwise.core.config import Section
from lwise.data import dirmap
from lwise.data.loading import DirmapImages, eval_transform
from lwise.guide.load import load_guide
from lwise.stimuli._write import save_images, stimulus_dirmap, stimulus_keys

__all__ = ["NaturalConfig", "write_natural"]

BATCH_SIZE = 64


@dataclass(frozen=True)
class NaturalConfig(Section):
    """How every stimulus set is encoded: the `format` and `jpeg_quality` keys of the
    `enhance` config section (defaults in its schema)."""

    SECTION = "enhance"

    format: str
    jpeg_quality: int


def write_natural(
    dirmap_csv: str | os.PathLike,
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    key_root: str | os.PathLike,
    cfg: NaturalConfig,
    workers: int,
    trusted: bool,
) -> pd.DataFrame:
    """Write the natural set of the dirmap's images at the guide model's input size."""
    size = load_guide(model_path, trusted=trusted, device="cpu").input_size
    csv = Path(dirmap_csv)
    df = dirmap.read(csv)
    keys = stimulus_keys(df, csv, key_root, cfg.format)
    data = DirmapImages(df, csv.parent, eval_transform(size))
    with atomic_path(out_dir, directory=True) as tmp:
        for x, _, idx in tqdm(
            DataLoader(data, batch_size=BATCH_SIZE, num_workers=workers), desc="natural"
        ):
            save_images(x, [tmp / keys[int(i)] for i in idx], cfg.format, cfg.jpeg_quality)
        out = stimulus_dirmap(df, keys)
        dirmap.write(out, tmp / "dirmap.csv")
    return out
