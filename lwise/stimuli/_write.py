"""Writing a stimulus set, shared by the natural and the enhanced sets.

Every set names an image by the same key: its path under the ImageFolder, with the set's file
extension (`lwise.core.keys.image_keys`), so one key names an image in all its versions. Files
are 8-bit images, as L-WISE `enhance.py` saves them (torchvision `save_image`: round(255·x)).

`ImageWriter` encodes and writes in worker processes (PNG encoding holds the GIL: threads do
not scale), behind the job's GPU work; with 0 processes it writes in the caller, the simple
loop that the pipelined one must match byte for byte.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image

from lwise.core.keys import image_keys
from lwise.data.imaging import FORMATS

log = logging.getLogger(__name__)


def stimulus_keys(
    df: pd.DataFrame, dirmap_csv: str | os.PathLike, key_root: str | os.PathLike, fmt: str
) -> list[str]:
    """The key of each row's image (its path under `key_root`) with the extension of `fmt`."""
    return image_keys(df["im_path"], dirmap_csv, key_root, suffix=FORMATS[fmt])


def stimulus_dirmap(df: pd.DataFrame, keys: list[str], **columns) -> pd.DataFrame:
    """The set's dirmap: `im_path` is the key, `orig_im_path` the source (kept from the input
    when it has one), plus `columns`."""
    return df.assign(im_path=keys, orig_im_path=df.get("orig_im_path", df["im_path"]), **columns)


def to_uint8(batch: torch.Tensor) -> torch.Tensor:
    """What an 8-bit file holds of images in [0, 1]: round(255·x), (B, H, W, 3) uint8."""
    return (batch.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def _encode(arrays: np.ndarray, paths: list[str], fmt: str, jpeg_quality: int) -> int:
    kwargs = {"quality": jpeg_quality} if fmt == "jpeg" else {}
    for array, path in zip(arrays, paths, strict=True):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(array)).save(path, **kwargs)
    return len(paths)


def save_images(batch: torch.Tensor, paths: list[Path], fmt: str, jpeg_quality: int) -> None:
    """Write each image of `batch` (B, 3, H, W in [0, 1]) as an 8-bit file, in the caller."""
    _encode(to_uint8(batch).cpu().numpy(), [str(p) for p in paths], fmt, jpeg_quality)


class ImageWriter:
    """Encode and write 8-bit images in `processes` worker processes, behind the caller.

    Make it before the job touches the GPU: the workers are forked at once. `write` queues a
    batch and returns; at most `depth` chunks per process wait, so memory stays bounded. Leaving
    the `with` block waits for every file and raises the first worker error; leaving it by an
    exception stops the workers at once; inside the job's `atomic_path` block use
    `stopping_on_error`, so that no worker writes into its temporary folder after it is removed.

        with ImageWriter(8, "png", 95) as writer:
            writer.write(to_uint8(images).cpu().numpy(), paths)
    """

    def __init__(self, processes: int, fmt: str, jpeg_quality: int, depth: int = 4):
        self.processes, self.fmt, self.jpeg_quality = processes, fmt, jpeg_quality
        self.pending: deque = deque()
        self.limit = depth * max(1, processes)
        self.written = 0
        self.pool = None
        if processes > 0:
            # fork: the job's own script is no importable module (spawn would run it again).
            self.pool = multiprocessing.get_context("fork").Pool(processes)

    def write(self, arrays: np.ndarray, paths: list[Path]) -> None:
        """Queue (B, H, W, 3) uint8 images for the files `paths`."""
        paths = [str(p) for p in paths]
        if self.processes == 0:
            self.written += _encode(arrays, paths, self.fmt, self.jpeg_quality)
            return
        per = -(-len(paths) // self.processes)
        for start in range(0, len(paths), per):
            args = (arrays[start : start + per], paths[start : start + per], self.fmt,
                    self.jpeg_quality)  # fmt: skip
            self.pending.append(self.pool.apply_async(_encode, args))
        while len(self.pending) > self.limit:
            self.written += self.pending.popleft().get()

    def finish(self) -> int:
        """Wait for every queued file (raising the first worker error); returns the count."""
        while self.pending:
            self.written += self.pending.popleft().get()
        return self.written

    def abort(self) -> None:
        """Stop the workers at once (nothing more is written), e.g. before removing the folder
        they write into."""
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None

    @contextlib.contextmanager
    def stopping_on_error(self) -> Iterator[ImageWriter]:
        """A block whose failure stops the workers before anything around it cleans up."""
        try:
            yield self
        except BaseException:
            self.abort()
            raise

    def __enter__(self) -> ImageWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.pool is None:
            return
        try:
            if exc_type is None:
                self.finish()
        finally:
            self.abort()  # at once when failing; idle workers otherwise
