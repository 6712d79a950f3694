"""Write files and folders under a temporary name, then rename.

An interrupted job must never leave a file that Snakemake (or a user) would take as complete.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd


def _temp_sibling(path: Path, *, directory: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{path.name}.tmp-"
    # Left by a killed earlier attempt (Snakemake never runs two jobs for one output at once).
    for stale in path.parent.glob(f"{glob.escape(prefix)}*"):
        _remove(stale)
    if directory:
        return Path(tempfile.mkdtemp(prefix=prefix, dir=path.parent))
    fd, name = tempfile.mkstemp(prefix=prefix, dir=path.parent)
    os.close(fd)
    return Path(name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; rename it to `path` only if the block succeeds.

    With `directory=True` the yielded path is an empty folder, and a folder already at `path`
    is replaced.
    """
    final = Path(path)
    tmp = _temp_sibling(final, directory=directory)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    if directory:
        os.chmod(tmp, 0o755)
        if final.exists():
            _remove(final)
    else:
        os.chmod(tmp, 0o644)
    os.replace(tmp, final)


def write_csv(df: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write a CSV without the index, atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_text(text: str, path: str | os.PathLike) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
