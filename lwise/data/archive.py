"""Safe extraction of zip and tar archives.

Every member is checked before anything is written: a member that would land outside the target
folder (absolute path, `..`, a link pointing out, a device file) stops the extraction with an
error naming the archive and the member.
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the extraction folder."""


def is_archive(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(ARCHIVE_SUFFIXES)


def _check_name(archive: Path, name: str) -> None:
    posix = PurePosixPath(name.replace("\\", "/"))
    if posix.is_absolute() or name.startswith(("/", "\\")) or (len(name) > 1 and name[1] == ":"):
        raise UnsafeArchiveError(f"{archive}: member {name!r} has an absolute path; refused")
    if ".." in posix.parts:
        raise UnsafeArchiveError(f"{archive}: member {name!r} escapes the target folder via '..'")


def _check_link(archive: Path, name: str, target: str, dest: Path) -> None:
    if os.path.isabs(target):
        raise UnsafeArchiveError(f"{archive}: link {name!r} points to absolute path {target!r}")
    where = (dest / PurePosixPath(name).parent / target).resolve()
    if not where.is_relative_to(dest.resolve()):
        raise UnsafeArchiveError(
            f"{archive}: link {name!r} -> {target!r} points outside the folder"
        )


def _check_tar(archive: Path, tar: tarfile.TarFile, dest: Path) -> None:
    for m in tar.getmembers():
        _check_name(archive, m.name)
        if m.issym():
            _check_link(archive, m.name, m.linkname, dest)
        elif m.islnk():
            # Hard-link targets are archive member names, relative to the archive root.
            _check_name(archive, m.linkname)
        elif not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(f"{archive}: member {m.name!r} is a device or fifo; refused")


def _zip_is_symlink(info: zipfile.ZipInfo) -> bool:
    return stat.S_ISLNK(info.external_attr >> 16)


def extract(archive: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Extract `archive` into `dest` after checking every member; return the member names."""
    archive, dest = Path(archive), Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    name = archive.name.lower()
    if name.endswith(".zip"):
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            for info in infos:
                _check_name(archive, info.filename)
                if _zip_is_symlink(info):
                    # zipfile would write the link target as a file's text; refuse instead.
                    raise UnsafeArchiveError(f"{archive}: member {info.filename!r} is a symlink")
            zf.extractall(dest)
            return [i.filename for i in infos]
    if is_archive(archive):
        with tarfile.open(archive) as tar:
            _check_tar(archive, tar, dest)
            # The 'data' filter repeats these checks inside tarfile and drops setuid bits.
            tar.extractall(dest, filter="data")
            return tar.getnames()
    raise ValueError(f"{archive}: not a supported archive ({', '.join(ARCHIVE_SUFFIXES)})")
