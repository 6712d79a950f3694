"""Safe extraction of zip and tar archives.

Every member is checked before anything is written: a member that would land outside the target
folder (absolute path, `..`, a link pointing out, a device file) stops the extraction with an
error naming the archive and the member, and so does an archive whose members add up to more
than the configured limits (total bytes, and bytes per byte of archive: a zip bomb).
"""

from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


class UnsafeArchiveError(ValueError):
    """An archive member would be written outside the extraction folder."""


class ArchiveTooLargeError(UnsafeArchiveError):
    """An archive would expand beyond the configured limits."""


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds on what one archive may expand to (the `download` config section)."""

    max_bytes: int
    max_ratio: float  # extracted bytes per archive byte

    def check(self, archive: Path, total: int) -> None:
        size = max(1, archive.stat().st_size)
        if total > self.max_bytes:
            raise ArchiveTooLargeError(
                f"{archive}: members add up to {total:,} bytes, more than the limit of "
                f"{self.max_bytes:,} (download.max_extracted_gib); nothing was extracted"
            )
        if total > self.max_ratio * size:
            raise ArchiveTooLargeError(
                f"{archive}: {size:,} bytes would expand to {total:,} ({total / size:.0f}x), "
                f"more than download.max_expansion_ratio={self.max_ratio:g}; nothing was "
                "extracted"
            )


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


def extract(
    archive: str | os.PathLike, dest: str | os.PathLike, limits: ExtractLimits | None = None
) -> list[str]:
    """Extract `archive` into `dest` after checking every member (and, with `limits`, the
    total size they declare: zipfile and tarfile never write more than a member declares);
    return the member names."""
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
            if limits:
                limits.check(archive, sum(i.file_size for i in infos))
            zf.extractall(dest)
            return [i.filename for i in infos]
    if is_archive(archive):
        with tarfile.open(archive) as tar:
            _check_tar(archive, tar, dest)
            if limits:
                limits.check(archive, sum(m.size for m in tar.getmembers() if m.isfile()))
            # The 'data' filter repeats these checks inside tarfile and drops setuid bits.
            tar.extractall(dest, filter="data")
            return tar.getnames()
    raise ValueError(f"{archive}: not a supported archive ({', '.join(ARCHIVE_SUFFIXES)})")
