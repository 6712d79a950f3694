"""Writing a stimulus set, shared by the natural and the enhanced sets.

Every set names an image by the same key: its path under the ImageFolder, with the set's file
extension (`lwise.core.keys.image_keys`), so one key names an image in all its versions. Files
are 8-bit images, as L-WISE `enhance.py` saves them (torchvision `save_image`: round(255·x)).

`ImageWriter` encodes and writes in worker processes (PNG encoding holds the GIL: threads do
not scale), behind the job's GPU work; with 0 processes it writes in the caller, the simple
loop that the pipelined one must match byte for byte. Pixels reach the workers through files
they memory-map (a ring of batch slots in shared memory, or the dataset's pixel cache), never
through the task pipe: pickling every batch cost the main process more than the attack.
This module does not import torch, so that the natural set's job starts in a second.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image

from lwise.core.keys import image_keys
from lwise.data.imaging import FORMATS
from lwise.stimuli.settings import Encoding

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

ROW_CHUNK = 32  # images per task when workers read the pixel cache themselves


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
    import torch

    return (batch.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)


def _encode(arrays: np.ndarray, paths: list[str], options: dict) -> int:
    for array, path in zip(arrays, paths, strict=True):
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.ascontiguousarray(array)).save(path, **options)
    return len(paths)


_MAPPED: dict[tuple, np.ndarray] = {}  # per worker process: the files it has mapped


def _mapped(source: tuple) -> np.ndarray:
    """A worker's view of `source`: ("npy", path) or ("ring", path, shape)."""
    if source not in _MAPPED:
        if source[0] == "npy":
            _MAPPED[source] = np.load(source[1], mmap_mode="r")
        else:
            _MAPPED[source] = np.memmap(source[1], np.uint8, mode="r", shape=source[2])
    return _MAPPED[source]


def _encode_rows(source: tuple, rows, paths: list[str], options: dict) -> int:
    """In a worker: encode `source`'s images at `rows` (a slice or an index array)."""
    return _encode(_mapped(source)[rows], paths, options)


class ImageWriter:
    """Encode and write 8-bit images in `processes` worker processes, behind the caller.

    Make it before the job touches the GPU: the workers are forked at once. `write` copies a
    batch into a free slot of a shared-memory ring (at most `depth` batches wait, so memory
    stays bounded) and returns; `write_rows` has the workers read the pixel cache directly.
    `on_written(n)` is called as files are done. Leaving the `with` block waits for every file
    and raises the first worker error; leaving it by an exception stops the workers at once;
    inside the job's `atomic_path` block use `stopping_on_error`, so that no worker writes
    into its temporary folder after it is removed.

        with ImageWriter(8, Encoding.from_config()) as writer:
            writer.write(to_uint8(images).cpu().numpy(), paths)
    """

    def __init__(
        self,
        processes: int,
        encoding: Encoding,
        depth: int = 4,
        on_written: Callable[[int], object] | None = None,
    ):
        self.processes, self.options = processes, encoding.save_options()
        self.depth = depth
        self.on_written = on_written
        self.pending: deque = deque()  # (ring slot or None, AsyncResult), in submission order
        self.written = 0
        self.pool = None
        self._ring: np.memmap | None = None
        self._ring_source: tuple = ()
        self._next_slot = 0
        self._ring_dir: str | None = None
        if processes > 0:
            # fork: the job's own script is no importable module (spawn would run it again).
            self.pool = multiprocessing.get_context("fork").Pool(processes)

    def _collect(self) -> None:
        """Wait for the oldest task; count its files."""
        n = self.pending.popleft()[1].get()
        self.written += n
        if self.on_written is not None:
            self.on_written(n)

    def _submit(self, slot: int | None, source: tuple, rows, paths: list[str]) -> None:
        args = (source, rows, paths, self.options)
        self.pending.append((slot, self.pool.apply_async(_encode_rows, args)))

    def _slot(self, arrays: np.ndarray) -> int:
        """A ring slot free for `arrays` (a new ring when a batch outgrows the slots)."""
        shape = (self.depth, *arrays.shape)
        if (
            self._ring is None
            or arrays.shape[1:] != self._ring.shape[2:]
            or len(arrays) > self._ring.shape[1]
        ):
            self.finish()  # the old ring's tasks, before it goes
            if self._ring_dir is None:
                shm = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None
                self._ring_dir = tempfile.mkdtemp(prefix="lwise-ring-", dir=shm)
            path = os.path.join(self._ring_dir, f"ring{len(os.listdir(self._ring_dir))}")
            self._ring = np.memmap(path, np.uint8, mode="w+", shape=shape)
            self._ring_source = ("ring", path, shape)
            self._next_slot = 0
        slot = self._next_slot
        self._next_slot = (slot + 1) % self.depth
        while any(s == slot for s, _ in self.pending):
            self._collect()
        return slot

    def write(self, arrays: np.ndarray, paths: list[Path]) -> None:
        """Queue (B, H, W, 3) uint8 images for the files `paths`."""
        paths = [str(p) for p in paths]
        if self.processes == 0:
            n = _encode(arrays, paths, self.options)
            self.written += n
            if self.on_written is not None:
                self.on_written(n)
            return
        slot = self._slot(arrays)
        self._ring[slot, : len(arrays)] = arrays
        per = -(-len(paths) // self.processes)
        for start in range(0, len(paths), per):
            stop = min(start + per, len(paths))
            self._submit(slot, self._ring_source, (slot, slice(start, stop)), paths[start:stop])

    def write_rows(self, npy: str | os.PathLike, rows: np.ndarray, paths: list[Path]) -> None:
        """Queue the images at `rows` of the .npy array `npy` (N, H, W, 3 uint8) for `paths`:
        the workers read them from the file, nothing passes through this process."""
        paths = [str(p) for p in paths]
        if self.processes == 0:
            self.write(np.load(npy, mmap_mode="r")[rows], paths)
            return
        for start in range(0, len(paths), ROW_CHUNK):
            stop = start + ROW_CHUNK
            self._submit(None, ("npy", str(npy)), rows[start:stop], paths[start:stop])
            while len(self.pending) > 2 * self.depth * self.processes:
                self._collect()

    def finish(self) -> int:
        """Wait for every queued file (raising the first worker error); returns the count."""
        while self.pending:
            self._collect()
        return self.written

    def abort(self) -> None:
        """Stop the workers at once (nothing more is written), e.g. before removing the folder
        they write into."""
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()
            self.pool = None
        self._close_ring()

    def _close_ring(self) -> None:
        self._ring = None
        if self._ring_dir is not None:
            shutil.rmtree(self._ring_dir, ignore_errors=True)
            self._ring_dir = None

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
            self._close_ring()
            return
        try:
            if exc_type is None:
                self.finish()
        finally:
            self.abort()  # at once when failing; idle workers otherwise
