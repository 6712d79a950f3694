"""Datasets read through dirmaps, with the L-WISE preprocessing (shorter side, centre crop).

`DirmapImages` decodes on the CPU (PIL) in DataLoader workers; `EncodedImages` with
`decode_images` decodes JPEGs on the GPU (nvjpeg) and everything else on the CPU.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg
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

    def __getitem__(self, key: int | tuple[int, int]):
        """`key` is a row position, or (row position, seed): the transform's random draws then
        come from that seed alone, whichever process loads the image and whatever it loaded
        before (`lwise.guide._train_data.SeededSampler`)."""
        i, seed = key if isinstance(key, tuple) else (key, None)
        with Image.open(self.paths[i]) as img:
            img.load()
            rgb = to_rgb(img)
        with torch.random.fork_rng(devices=[], enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(seed)
            return self.transform(rgb), self.labels[i], i


def preprocess_transform(size: int) -> v2.Compose:
    """`eval_transform` without the final conversion: the 8-bit pixels (3, size, size) that
    `to_unit` turns into exactly what `eval_transform` gives (its Resize already rounds to
    8 bits), so a uint8 cache of them is lossless."""
    return v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])


def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 images (..., 3, H, W) as float32 in [0, 1], as `eval_transform` converts them."""
    return v2.functional.to_dtype(pixels, torch.float32, scale=True)


JPEG_MAGIC = b"\xff\xd8\xff"


class EncodedImages(DirmapImages):
    """A dirmap's images for decoding on a device: a JPEG comes as its file's bytes (a 1-D
    uint8 array), anything else already decoded on the CPU into `preprocess_transform(size)`
    pixels (3, size, size uint8). Batch with `collate_encoded`, decode with `decode_images`.

    Items are numpy arrays, not tensors: DataLoader workers would hand each tensor over in a
    shared-memory segment of its own, hundreds per batch; arrays travel in the pickle."""

    def __init__(self, df: pd.DataFrame, root: str | os.PathLike, size: int, label_column: str):
        super().__init__(df, root, preprocess_transform(size), label_column)

    def __getitem__(self, i: int):
        data = self.paths[i].read_bytes()
        if data.startswith(JPEG_MAGIC):
            return np.frombuffer(bytearray(data), dtype=np.uint8), int(self.labels[i]), i
        return decode_on_cpu(data, self.transform).numpy(), int(self.labels[i]), i


def decode_on_cpu(data: bytes, transform) -> torch.Tensor:
    """The CPU path: PIL decodes the file's bytes, as `DirmapImages` does."""
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return transform(to_rgb(img))


def collate_encoded(items: list) -> tuple[list[np.ndarray], np.ndarray, np.ndarray]:
    """Batch `EncodedImages` items: (list of byte or pixel arrays, labels, row positions)."""
    data, labels, rows = zip(*items, strict=True)
    return list(data), np.asarray(labels), np.asarray(rows)


def decode_images(
    data: list[np.ndarray | torch.Tensor], size: int, device: torch.device
) -> tuple[torch.Tensor, int]:
    """Float images (B, 3, size, size) in [0, 1] on `device` from `collate_encoded` data.

    JPEG bytes are decoded on `device` (torchvision's nvjpeg on CUDA), resized and cropped
    there as `eval_transform` does; images of one shape are resized together. A batch that the
    device cannot decode (CMYK, a corrupt file) falls back to the CPU path (PIL). Returns the
    images and how many of them fell back.
    """
    transform = preprocess_transform(size)
    data = [torch.as_tensor(d) for d in data]  # no copy
    jpeg = [i for i, d in enumerate(data) if d.dim() == 1]
    out: list[torch.Tensor | None] = [
        None if d.dim() == 1 else d.to(device, non_blocking=True) for d in data
    ]
    fallback = 0
    if jpeg:
        try:
            decoded = decode_jpeg([data[i] for i in jpeg], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:  # nvjpeg refuses some files; the whole call fails then
            decoded = None
        if decoded is None:
            for i in jpeg:
                out[i] = decode_on_cpu(data[i].numpy().tobytes(), transform).to(device)
            fallback = len(jpeg)
        else:
            by_shape: dict[tuple, list[tuple[int, torch.Tensor]]] = {}
            for i, image in zip(jpeg, decoded, strict=True):
                by_shape.setdefault(tuple(image.shape), []).append((i, image))
            for group in by_shape.values():
                resized = transform(torch.stack([image for _, image in group]))
                for (i, _), image in zip(group, resized, strict=True):
                    out[i] = image
    return to_unit(torch.stack(out)), fallback  # type: ignore[arg-type]
