"""Stage 6: the natural stimuli: the unperturbed images, preprocessed and encoded exactly like
the enhanced ones (L-WISE `enhance.py --save_originals`), under the same keys.

`preprocess_stimuli` decodes the dataset once into its pixel cache (`lwise.data.pixels`), at the
guide model's input size; the natural set and every enhanced set start from it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from lwise.core.atomic import atomic_path
from lwise.core.config import Section
from lwise.core.logs import progress
from lwise.data import dirmap
from lwise.data.pixels import build as build_pixels
from lwise.data.pixels import pixel_batches
from lwise.guide.load import load_guide
from lwise.stimuli._write import ImageWriter, stimulus_dirmap, stimulus_keys

__all__ = ["NaturalConfig", "preprocess_stimuli", "write_natural"]

BATCH_SIZE = 64


@dataclass(frozen=True)
class NaturalConfig(Section):
    """How every stimulus set is encoded: the `format` and `jpeg_quality` keys of the
    `enhance` config section (defaults in its schema)."""

    SECTION = "enhance"

    format: str
    jpeg_quality: int


def preprocess_stimuli(
    dirmap_csv: str | os.PathLike,
    model_path: str | os.PathLike,
    out_npy: str | os.PathLike,
    out_index: str | os.PathLike,
    *,
    key_root: str | os.PathLike,
    workers: int,
    trusted: bool,
) -> pd.DataFrame:
    """Decode every image of the dirmap once, at the guide model's input size, into the pixel
    cache (`lwise.data.pixels.build`) that the natural and enhanced sets read."""
    size = load_guide(model_path, trusted=trusted, device="cpu").input_size
    return build_pixels(
        dirmap_csv, out_npy, out_index, key_root=key_root, size=size, workers=workers
    )


def write_natural(
    dirmap_csv: str | os.PathLike,
    model_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    key_root: str | os.PathLike,
    cfg: NaturalConfig,
    workers: int,
    trusted: bool,
    pixels: tuple[str | os.PathLike, str | os.PathLike] | None = None,
) -> pd.DataFrame:
    """Write the natural set of the dirmap's images at the guide model's input size, from the
    pixel cache (.npy, index) when given, else decoding the files; `workers` processes encode
    (0: in the caller)."""
    csv = Path(dirmap_csv)
    df = dirmap.read(csv)
    keys = stimulus_keys(df, csv, key_root, cfg.format)
    with ImageWriter(workers, cfg.format, cfg.jpeg_quality) as writer:
        size = load_guide(model_path, trusted=trusted, device="cpu").input_size
        source = pixel_batches(df, csv, key_root, pixels, size, BATCH_SIZE, workers, False)
        bar = progress(total=len(df), desc="natural", unit="img")
        with bar, atomic_path(out_dir, directory=True) as tmp, writer.stopping_on_error():
            for pos, u8 in source:
                arrays = u8.permute(0, 2, 3, 1).numpy()
                writer.write(arrays, [tmp / keys[i] for i in pos])
                bar.update(len(pos))
            writer.finish()  # every file written before the rename
            out = stimulus_dirmap(df, keys)
            dirmap.write(out, tmp / "dirmap.csv")
    return out
