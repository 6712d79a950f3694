"""Datasets read through dirmaps, with the L-WISE preprocessing (shorter side, centre crop)."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from lwise.data import dirmap
from lwise.data.imaging import to_rgb


def eval_transform(size: int) -> v2.Compose:
    """Resize the shorter side to `size`, centre-crop to size×size, float in [0, 1].

    This is L-WISE's DirmapDataset transform (Resize(224), CenterCrop(224)), not the ImageNet
    test transform (Resize(256), CenterCrop(224)).
    """
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(size, antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
        ]
    )


def train_transform(size: int, augment: str) -> v2.Compose:
    """`none` is the eval transform; `crop_flip` adds RandomResizedCrop(0.8-1) and a flip."""
    if augment == "none":
        return eval_transform(size)
    if augment == "crop_flip":
        return v2.Compose(
            [
                v2.ToImage(),
                v2.RandomResizedCrop(size, scale=(0.8, 1.0), antialias=True),
                v2.RandomHorizontalFlip(),
                v2.ToDtype(torch.float32, scale=True),
            ]
        )
    raise ValueError(f"augment {augment!r}: expected 'none' or 'crop_flip'")


class DirmapImages(Dataset):
    """Images of a dirmap (optionally one split) as (image, label, row position)."""

    def __init__(
        self,
        df: pd.DataFrame,
        root: str | os.PathLike,
        transform,
        label_column: str = "class_num",
    ):
        if label_column not in df.columns:
            raise ValueError(
                f"label column {label_column!r} not in dirmap columns {list(df.columns)}"
            )
        self.paths = [Path(root) / p for p in df["im_path"]]
        self.labels = torch.as_tensor(df[label_column].astype(int).to_numpy().copy())
        self.transform = transform

    @classmethod
    def from_csv(cls, csv: str | os.PathLike, transform, split: str | None = None, **kw):
        df = dirmap.read(csv)
        if split is not None:
            df = df[df["split"] == split].reset_index(drop=True)
            if df.empty:
                raise ValueError(f"{csv}: no rows of split {split!r}")
        return cls(df, Path(csv).parent, transform, **kw)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with Image.open(self.paths[i]) as img:
            img.load()
            return self.transform(to_rgb(img)), self.labels[i], i
