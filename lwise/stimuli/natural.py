"""Stage 6: the natural stimuli: the unperturbed images, preprocessed and encoded exactly like
the enhanced ones (L-WISE `enhance.py --save_originals`), under the same keys.

`preprocess_stimuli` decodes the dataset once into its pixel cache (`lwise.data.pixels`), at the
guide model's input size; the natural set and every enhanced set start from it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from lwise.core.atomic import atomic_path
from lwise.core.keys import image_keys
from lwise.core.logs import progress
from lwise.data import dirmap
from lwise.data.pixels import PixelCache
from lwise.stimuli._write import ImageWriter, stimulus_dirmap, stimulus_keys
from lwise.stimuli.settings import Encoding

__all__ = ["NaturalConfig", "preprocess_stimuli", "write_natural"]

BATCH_SIZE = 64


# The natural set has no settings but how its files are encoded, which it shares with every set.
NaturalConfig = Encoding


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
    from lwise.data.pixels import build as build_pixels
    from lwise.guide.load import load_guide

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
    (0: in the caller).

    With the cache, the workers read the pixels from it themselves and this process never
    imports torch: the job is bounded by encoding alone."""
    csv = Path(dirmap_csv)
    df = dirmap.read(csv)
    keys = stimulus_keys(df, csv, key_root, cfg.format)
    bar = progress(total=len(df), desc="natural", unit="img")
    with ImageWriter(workers, cfg, on_written=bar.update) as writer:
        with bar, atomic_path(out_dir, directory=True) as tmp, writer.stopping_on_error():
            paths = [tmp / k for k in keys]
            if pixels is not None:
                cache = PixelCache(*pixels)
                # The cache's own keys: the images' keys before the set's extension.
                rows = cache.rows(image_keys(df["im_path"], csv, key_root), size=None)
                writer.write_rows(cache.path, rows, paths)
            else:
                _write_decoded(writer, df, csv, model_path, workers, trusted, paths)
            writer.finish()  # every file written before the rename
            out = stimulus_dirmap(df, keys)
            dirmap.write(out, tmp / "dirmap.csv")
    return out


def _write_decoded(writer, df, csv, model_path, workers, trusted, paths) -> None:
    """Without a pixel cache: decode the files at the guide model's input size."""
    from lwise.data.pixels import decoded_batches
    from lwise.guide.load import load_guide

    size = load_guide(model_path, trusted=trusted, device="cpu").input_size
    for pos, u8 in decoded_batches(df, csv.parent, size, BATCH_SIZE, workers):
        writer.write(u8.permute(0, 2, 3, 1).numpy(), [paths[i] for i in pos])
