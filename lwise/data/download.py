"""Stage 1: fetch a dataset's source files (http/https/s3/file/local), verify, and extract.

Partial HTTP and S3 downloads are kept as `<name>.part` and resumed with Range requests; the file
only takes its final name once complete and, when a checksum is configured, verified.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import shutil
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from lwise.core.config import Section
from lwise.core.logs import progress
from lwise.data.archive import ExtractLimits, extract, is_archive

log = logging.getLogger(__name__)

CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A source could not be fetched after the allowed retries."""


class ChecksumError(ValueError):
    """A fetched file does not match its configured checksum."""


@dataclass(frozen=True)
class DownloadConfig(Section):
    """How sources are fetched (the config's `download` section; defaults in the schema)."""

    SECTION = "download"

    retries: int  # attempts after the first, with exponential backoff
    backoff: float  # seconds before the first retry
    timeout: float  # seconds without data before a request is abandoned
    s3_endpoint_url: str | None  # MinIO or another S3-compatible server; None means AWS
    max_extracted_gib: float  # what one archive may expand to
    max_expansion_ratio: float  # extracted bytes per archive byte (zip bombs reach 1000s)

    @property
    def limits(self) -> ExtractLimits:
        return ExtractLimits(int(self.max_extracted_gib * 2**30), self.max_expansion_ratio)


@dataclass(frozen=True)
class Source:
    """One file of a dataset, as the config's `sources:` entries describe it."""

    url: str
    sha256: str | None = None
    md5: str | None = None
    filename: str | None = None
    extract: bool | None = None  # None: extract when the name looks like an archive
    nested: bool = False  # also extract archives found inside (Dataverse bundles zips in a zip)

    def __post_init__(self) -> None:
        # The name is joined to the downloads folder: one plain path component only.
        name = self.filename
        if name is not None and (
            name in ("", ".", "..") or "/" in name or "\\" in name or ":" in name
        ):
            raise ValueError(
                f"source {self.url!r}: filename {name!r} must be a single file name "
                "(no '/', '\\', ':', '.' or '..')"
            )

    @classmethod
    def from_config(cls, entry: dict) -> Source:
        keys = ("url", "sha256", "md5", "filename", "extract", "nested")
        return cls(**{k: entry[k] for k in keys if k in entry})

    @property
    def scheme(self) -> str:
        scheme = urllib.parse.urlparse(self.url).scheme.lower()
        return scheme if scheme in ("http", "https", "s3", "file") else "local"

    @property
    def name(self) -> str:
        if self.filename:
            return self.filename
        path = urllib.parse.urlparse(self.url).path if self.scheme != "local" else self.url
        name = os.path.basename(urllib.parse.unquote(path).rstrip("/"))
        if name in ("", ".", ".."):
            raise ValueError(f"source {self.url!r}: cannot derive a file name; set 'filename'")
        return name

    @property
    def should_extract(self) -> bool:
        return is_archive(self.name) if self.extract is None else self.extract

    def local_path(self) -> Path:
        if self.scheme == "file":
            return Path(urllib.request.url2pathname(urllib.parse.urlparse(self.url).path))
        return Path(self.url).expanduser()


def file_digest(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, source: Source) -> None:
    """Raise ChecksumError if `path` does not match the source's sha256 or md5."""
    for algorithm in ("sha256", "md5"):
        expected = getattr(source, algorithm)
        if expected:
            got = file_digest(path, algorithm)
            if got.lower() != expected.lower():
                raise ChecksumError(
                    f"{source.url}: {algorithm} mismatch for {source.name}: "
                    f"expected {expected.lower()}, got {got}"
                )


# --- remote readers: each returns (stream, total size or None, whether the offset was honoured,
# the version validator of what is sent: a strong ETag or Last-Modified, or None)


def _open_http(
    url: str, offset: int, timeout: float, validator: str | None
) -> tuple[BinaryIO, int | None, bool, str | None]:
    request = urllib.request.Request(url, headers={"User-Agent": "lwise-download"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
        # RFC 9110 If-Range: the rest only if the file is still the version the part came from;
        # otherwise the server sends the whole new file (200).
        if validator:
            request.add_header("If-Range", validator)
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to fetch: the partial file is complete
            return _EmptyStream(), offset, True, validator
        raise
    etag = response.headers.get("ETag")
    version = etag if etag and not etag.startswith("W/") else response.headers.get("Last-Modified")
    if response.status == 206:
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        return response, int(total) if total.isdigit() else None, True, version
    length = response.headers.get("Content-Length")
    return response, int(length) if length else None, False, version


def _open_s3(
    url: str, offset: int, endpoint_url: str | None, validator: str | None
) -> tuple[BinaryIO, int | None, bool, str | None]:
    import boto3
    from botocore.exceptions import ClientError

    parsed = urllib.parse.urlparse(url)
    client = boto3.client("s3", endpoint_url=endpoint_url)
    kwargs = {"Bucket": parsed.netloc, "Key": parsed.path.lstrip("/")}
    if offset:
        kwargs["Range"] = f"bytes={offset}-"
        if validator:
            kwargs["IfMatch"] = validator
    try:
        response = client.get_object(**kwargs)
    except ClientError as err:
        if offset and err.response.get("Error", {}).get("Code") in ("PreconditionFailed", "412"):
            # The object changed since the partial download: fetch it whole.
            kwargs.pop("Range"), kwargs.pop("IfMatch", None)
            response = client.get_object(**kwargs)
            return response["Body"], response["ContentLength"], False, response.get("ETag")
        raise
    if offset and "ContentRange" in response:
        total = int(response["ContentRange"].rpartition("/")[2])
        return response["Body"], total, True, response.get("ETag")
    return response["Body"], response["ContentLength"], False, response.get("ETag")


class _EmptyStream:
    def read(self, _n: int = -1) -> bytes:
        return b""

    def close(self) -> None:
        pass


def _retryable(err: BaseException) -> bool:
    if isinstance(err, urllib.error.HTTPError):
        return err.code in (408, 429) or err.code >= 500
    if isinstance(err, urllib.error.URLError | OSError | http.client.HTTPException):
        return True
    code = getattr(err, "response", {}).get("ResponseMetadata", {}).get("HTTPStatusCode")
    return code is not None and (code >= 500 or code == 429)


def _fetch_remote(
    source: Source,
    part: Path,
    *,
    retries: int,
    backoff: float,
    timeout: float,
    s3_endpoint_url: str | None,
) -> None:
    # The version the partial file came from, so that a resume never splices two versions.
    version_file = part.with_name(part.name + ".version")
    for attempt in range(retries + 1):
        offset = part.stat().st_size if part.exists() else 0
        validator = version_file.read_text() if version_file.exists() else None
        if offset and validator is None and not (source.sha256 or source.md5):
            log.info(
                "%s: %s has no recorded version (ETag/Last-Modified) and no checksum is "
                "configured, so it cannot be resumed safely; starting over",
                source.url,
                part.name,
            )
            offset = 0
        try:
            if source.scheme == "s3":
                stream, total, resumed, version = _open_s3(
                    source.url, offset, s3_endpoint_url, validator
                )
            else:
                stream, total, resumed, version = _open_http(
                    source.url, offset, timeout, validator
                )
            if offset and not resumed:
                log.info(
                    "%s: the file changed on the server since %s was started (If-Range did not "
                    "match), or the server ignores ranges; starting over",
                    source.url,
                    part.name,
                )
                offset = 0
            if version and not offset:
                version_file.write_text(version)
            elif not offset:
                version_file.unlink(missing_ok=True)
            with (
                open(part, "ab" if offset else "wb") as out,
                progress(
                    total=total, initial=offset, unit="B", unit_scale=True, desc=source.name
                ) as bar,
            ):
                try:
                    while block := stream.read(CHUNK):
                        out.write(block)
                        bar.update(len(block))
                finally:
                    stream.close()
            size = part.stat().st_size
            if total is not None and size < total:
                raise http.client.IncompleteRead(b"", total - size)
            version_file.unlink(missing_ok=True)
            return
        except Exception as err:  # noqa: BLE001 - classified by _retryable
            if not _retryable(err) or attempt == retries:
                raise DownloadError(
                    f"{source.url}: download failed after {attempt + 1} attempt(s): {err!r}"
                ) from err
            delay = backoff * 2**attempt
            log.warning(
                "%s: %r; retrying in %.1fs (%d/%d)", source.url, err, delay, attempt + 1, retries
            )
            time.sleep(delay)


def fetch(
    source: Source, downloads_dir: str | os.PathLike, settings: DownloadConfig | None = None
) -> Path:
    """Return a verified local copy of `source`, downloading (or resuming) it when needed.

    Local files are used where they are, after verification. `settings` None takes the
    schema's defaults.
    """
    settings = settings or DownloadConfig.from_config()
    if source.scheme in ("file", "local"):
        path = source.local_path()
        if not path.exists():
            raise FileNotFoundError(f"source {source.url!r}: no such file or folder: {path}")
        if path.is_file():
            verify(path, source)
        return path

    downloads_dir = Path(downloads_dir)
    downloads_dir.mkdir(parents=True, exist_ok=True)
    final = downloads_dir / source.name
    if final.exists():
        try:
            verify(final, source)
            log.info("%s: already downloaded as %s", source.url, final)
            return final
        except ChecksumError as err:
            log.warning("%s; downloading again", err)
            final.unlink()
    part = final.with_name(final.name + ".part")
    _fetch_remote(
        source,
        part,
        retries=settings.retries,
        backoff=settings.backoff,
        timeout=settings.timeout,
        s3_endpoint_url=settings.s3_endpoint_url,
    )
    try:
        verify(part, source)
    except ChecksumError:
        part.unlink()  # a bad file never sits under the final name, nor is resumed from
        raise
    os.replace(part, final)
    log.info("%s: saved %s (%d bytes)", source.url, final, final.stat().st_size)
    return final


def place(path: Path, source: Source, raw_dir: Path, limits: ExtractLimits) -> None:
    """Put a fetched source into the raw folder: extract archives, link or copy the rest."""
    if path.is_dir():
        (raw_dir / source.name).symlink_to(path.resolve(), target_is_directory=True)
    elif source.should_extract:
        log.info("extracting %s", path)
        members = extract(path, raw_dir, limits)
        log.info("extracted %d members from %s", len(members), path.name)
        if source.nested:
            for inner in sorted(members):
                if is_archive(inner) and (raw_dir / inner).is_file():
                    log.info("extracting nested %s", inner)
                    extract(raw_dir / inner, (raw_dir / inner).parent, limits)
                    (raw_dir / inner).unlink()
    else:
        target = raw_dir / source.name
        try:
            os.link(path, target)
        except OSError:
            shutil.copy2(path, target)


def download_dataset(
    sources: list[dict],
    raw_dir: str | os.PathLike,
    downloads_dir: str | os.PathLike,
    settings: DownloadConfig | None = None,
) -> None:
    """Build a dataset's raw folder from its configured sources, atomically.

    An entry `{builtin: name, options: {...}}` writes a bundled dataset instead of fetching.
    Fetched files stay in `downloads_dir`, so a rerun resumes or reuses them.
    """
    from lwise.core.atomic import atomic_path
    from lwise.data.builtin import BUILTIN_DATASETS

    settings = settings or DownloadConfig.from_config()
    with atomic_path(raw_dir, directory=True) as tmp:
        for entry in sources:
            if "builtin" in entry:
                n = BUILTIN_DATASETS[entry["builtin"]](tmp, **entry.get("options", {}))
                log.info("wrote builtin dataset %s (%d images)", entry["builtin"], n)
                continue
            source = Source.from_config(entry)
            place(fetch(source, downloads_dir, settings), source, tmp, settings.limits)
