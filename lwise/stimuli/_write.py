"""Writing a stimulus set, shared by the natural and the enhanced sets.

Every set names an image by the same key: its path under the ImageFolder, with the set's file
extension (`lwise.core.keys.image_keys`), so one key names an image in all its versions. Files
are 8-bit images, as L-WISE `enhance.py` saves them (torchvision `save_image`: round(255·x)).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from lwise.core.keys import image_keys
from lwise.data.imaging import FORMATS

SAVE_THREADS = 4


def stimulus_keys(
    df: pd.DataFrame, dirmap_csv: str | os.PathLike, key_root: str | os.PathLike, fmt: str
) -> list[str]:
    """The key of each row's image (its path under `key_root`) with the extension of `fmt`."""
    return image_keys(df["im_path"], dirmap_csv, key_root, suffix=FORMATS[fmt])


def stimulus_dirmap(df: pd.DataFrame, keys: list[str], **columns) -> pd.DataFrame:
    """The set's dirmap: `im_path` is the key, `orig_im_path` the source (kept from the input
    when it has one), plus `columns`."""
    return df.assign(im_path=keys, orig_im_path=df.get("orig_im_path", df["im_path"]), **columns)


def save_images(batch: torch.Tensor, paths: list[Path], fmt: str, jpeg_quality: int) -> None:
    """Write each image of `batch` (B, 3, H, W in [0, 1]) as an 8-bit file."""
    arrays = (batch.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    kwargs = {"quality": jpeg_quality} if fmt == "jpeg" else {}

    def one(item):
        array, path = item
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(array)).save(path, **kwargs)

    with ThreadPoolExecutor(max_workers=SAVE_THREADS) as pool:
        list(pool.map(one, zip(arrays, paths, strict=True)))
