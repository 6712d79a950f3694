"""The preprocessed pixels of a dataset, decoded once: one uint8 array for every stimulus job.

`build` decodes every image of a dirmap (in DataLoader worker processes), preprocesses it as
`lwise.data.loading.eval_transform` does (shorter side to `size`, centre crop) and writes the
8-bit result into `<name>.npy` (N, size, size, 3), with `<name>.csv` naming each row's image key.
The natural set and every enhanced set read this array memory-mapped (`PixelCache`), so a job
for a tenth epsilon decodes nothing. `PREPROCESSING` names the preprocessing: the workflow
passes it as a parameter, so a change to it rebuilds the array; `PixelCache` refuses an array
of another size or one that lacks an image.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch

__all__ = ["PREPROCESSING", "PixelCache", "build", "decoded_batches", "pixel_batches", "prefetch"]

log = logging.getLogger(__name__)

# Bump when `lwise.data.loading.preprocess_transform` changes what it computes.
PREPROCESSING = "resize-shorter-side-antialias+center-crop+uint8/v1"
BATCH = 64
PREFETCH = 2  # batches read ahead of their consumer


def build(
    dirmap_csv: str | os.PathLike,
    out_npy: str | os.PathLike,
    out_index: str | os.PathLike,
    *,
    key_root: str | os.PathLike,
    size: int,
    workers: int,
) -> pd.DataFrame:
    """Decode and preprocess every image of `dirmap_csv` once; returns the index (key, row)."""
    from lwise.core.atomic import atomic_path, write_csv
    from lwise.core.keys import image_keys
    from lwise.core.logs import progress
    from lwise.data import dirmap

    csv = Path(dirmap_csv)
    df = dirmap.read(csv)
    keys = image_keys(df["im_path"], csv, key_root)
    index = pd.DataFrame({"key": keys, "row": np.arange(len(df))})
    if index["key"].duplicated().any():
        dup = index.loc[index["key"].duplicated(), "key"].iloc[0]
        raise ValueError(f"{csv}: image {dup!r} is listed more than once")
    batches = decoded_batches(df, csv.parent, size, BATCH, workers)
    with atomic_path(out_npy) as tmp:
        with open(tmp, "wb") as f:  # open_memmap needs a name ending in .npy; write the header
            np.lib.format.write_array_header_1_0(
                f, {"descr": "|u1", "fortran_order": False, "shape": (len(df), size, size, 3)}
            )
            offset = f.tell()
        pixels = np.memmap(tmp, dtype=np.uint8, mode="r+", offset=offset,
                           shape=(len(df), size, size, 3))  # fmt: skip
        for pos, u8 in progress(batches, desc="decoding", total=-(-len(df) // BATCH)):
            pixels[pos] = u8.permute(0, 2, 3, 1).numpy()
        pixels.flush()
        del pixels
        write_csv(index, out_index)
    log.info("preprocessed %d images to %d px: %s", len(df), size, out_npy)
    return index


class PixelCache:
    """A `build` output, memory-mapped: `rows(keys)` finds images, `batches` reads them."""

    def __init__(self, npy: str | os.PathLike, index: str | os.PathLike):
        self.path = Path(npy)
        self.pixels = np.load(self.path, mmap_mode="r")
        table = pd.read_csv(index, dtype={"key": str})
        if list(table.columns) != ["key", "row"] or len(table) != len(self.pixels):
            raise ValueError(
                f"{index}: expected columns key,row and {len(self.pixels)} rows for {npy}; "
                "delete both files to rebuild them"
            )
        self._row = dict(zip(table["key"], table["row"], strict=True))

    @property
    def size(self) -> int:
        return int(self.pixels.shape[1])

    def rows(self, keys: list[str], size: int | None) -> np.ndarray:
        """The array row of each key; an error names a missing image or a size mismatch (None:
        the size is not checked)."""
        if size is not None and self.size != size:
            raise ValueError(
                f"{self.path} holds {self.size}-px images but the guide model takes {size} px:"
                " it is stale; rebuild it (snakemake reruns the rule that makes it)"
            )
        missing = [k for k in keys if k not in self._row]
        if missing:
            raise ValueError(
                f"{self.path} has no image {missing[0]!r} ({len(missing)} missing in all): it "
                "was made from another dirmap; rebuild it"
            )
        return np.asarray([self._row[k] for k in keys], dtype=np.int64)

    def batches(self, rows: np.ndarray, batch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(positions in `rows`, uint8 pixels (B, size, size, 3)) per batch, read in order."""
        for start in range(0, len(rows), batch):
            pos = np.arange(start, min(start + batch, len(rows)))
            sel = rows[pos]
            contiguous = len(sel) and np.array_equal(sel, np.arange(sel[0], sel[0] + len(sel)))
            chunk = self.pixels[sel[0] : sel[0] + len(sel)] if contiguous else self.pixels[sel]
            yield pos, np.array(chunk)  # a writable copy in memory


def prefetch(batches: Iterable, depth: int = PREFETCH) -> Iterator:
    """`batches`, produced `depth` ahead in a thread (numpy and torch copies release the GIL)."""
    items: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    done = object()

    def produce() -> None:
        try:
            for item in batches:
                if stop.is_set():
                    return
                items.put(item)
            items.put(done)
        except BaseException as err:  # handed to the consumer
            items.put(err)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not done:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a producer waiting on a full queue
            try:
                items.get_nowait()
            except queue.Empty:
                thread.join(0.01)


def decoded_batches(
    df: pd.DataFrame, root, size: int, batch: int, workers: int, pin: bool = False
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(dirmap row positions, uint8 images (B, 3, size, size)) per batch, the files under
    `root` decoded in `workers` DataLoader processes and preprocessed as the cache holds them
    (8-bit through the workers: a quarter of float32's bytes). The workers start decoding at
    the call, before the first batch is asked for."""
    from torch.utils.data import DataLoader

    from lwise.data.loading import DirmapImages, preprocess_transform

    data = DirmapImages(df, root, preprocess_transform(size))
    batches = iter(DataLoader(data, batch_size=batch, num_workers=workers, pin_memory=pin))
    return ((pos.numpy(), u8) for u8, _, pos in batches)


def pixel_batches(
    df: pd.DataFrame, csv: Path, key_root, pixels, size: int, batch: int, workers: int, pin: bool
) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
    """(dirmap row positions, uint8 images (B, 3, size, size)) per batch: from the pixel
    cache `pixels` = (npy, index), or decoded from the files by DataLoader workers."""
    from lwise.core.keys import image_keys

    if pixels is None:
        yield from decoded_batches(df, csv.parent, size, batch, workers, pin)
        return
    from torch import from_numpy as torch_from_numpy

    cache = PixelCache(*pixels)
    rows = cache.rows(image_keys(df["im_path"], csv, key_root), size)

    def read() -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        for pos, chunk in cache.batches(rows, batch):
            u8 = torch_from_numpy(chunk)
            yield pos, (u8.pin_memory() if pin else u8).permute(0, 3, 1, 2)

    yield from prefetch(read())
