"""Publish a folder of static files (a study's web page and trial lists) to S3, beside the
image sets, and write a manifest of what is where.

The folder names what it publishes in `files.csv` (columns path, size, md5; the experiments
stage writes it with the study, `lwise.experiments.page.write_listing`). Only those files go
up, each checked first against its listed size and MD5, so nothing that appears in the folder
later (downloaded responses, notes) and nothing outside it (links, '..') is published. Each
file becomes the object `<prefix><path>` in the upload section's bucket, the templates filled
with the caller's fields (the workflow uses {set} = "study", so the study lies next to its
image sets: its own bucket under the default per-set template, its own prefix under one
bucket). Uploads go through `lwise.publish.s3.upload_files`, which skips objects already
holding the same bytes, so a rerun for an unchanged study sends nothing.

Content types come from the fixed table `CONTENT_TYPES`, not from Python's `mimetypes`, whose
answer for .js depends on the Python version and on /etc/mime.types; a browser opening the
page from the bucket needs text/html for the page and a JavaScript type for its scripts.
Text types name UTF-8, the encoding the study writes.

The manifest (CSV, and JSON records) has one row per file: key, path, size, md5,
content_type, url; it is written atomically, after every file is in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path, PurePosixPath

import boto3
import pandas as pd

from lwise.core.atomic import write_csv, write_text
from lwise.core.keys import FILE_LISTING as LISTING
from lwise.core.keys import object_key
from lwise.publish.s3 import UploadConfig, UploadStats, object_urls, upload_files

log = logging.getLogger(__name__)

__all__ = ["CONTENT_TYPES", "SiteError", "content_type", "read_listing", "publish_site"]

_LISTING_COLUMNS = ("path", "size", "md5")
_UTF8 = "; charset=utf-8"
CONTENT_TYPES = {
    ".html": "text/html" + _UTF8,
    ".htm": "text/html" + _UTF8,
    ".js": "application/javascript" + _UTF8,
    ".css": "text/css" + _UTF8,
    ".json": "application/json",  # UTF-8 by definition (RFC 8259), no charset parameter
    ".csv": "text/csv" + _UTF8,
    ".txt": "text/plain" + _UTF8,
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
    ".bmp": "image/bmp",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
}


class SiteError(ValueError):
    """The folder or its listing cannot be published; the message names the file and line."""


def content_type(key: str) -> str:
    """The Content-Type of an object, from its extension (`CONTENT_TYPES`)."""
    suffix = PurePosixPath(key).suffix.lower()
    try:
        return CONTENT_TYPES[suffix]
    except KeyError:
        raise SiteError(
            f"{key}: no content type for {suffix or 'a file without extension'!r}; "
            f"known: {' '.join(CONTENT_TYPES)}"
        ) from None


def read_listing(folder: str | os.PathLike) -> pd.DataFrame:
    """`folder/files.csv`, checked: every row names a file inside `folder` (no link, no '..')
    with a known content type, whose size and MD5 are still those listed."""
    folder = Path(folder)
    listing_csv = folder / LISTING
    if not listing_csv.is_file():
        raise SiteError(
            f"{listing_csv}: not found; the folder must list the files it publishes "
            f"(columns {', '.join(_LISTING_COLUMNS)})"
        )
    df = pd.read_csv(listing_csv, dtype={"path": str, "md5": str}, keep_default_na=False)
    missing = [c for c in _LISTING_COLUMNS if c not in df.columns]
    if missing:
        raise SiteError(f"{listing_csv}: missing column(s) {missing}; found {list(df.columns)}")
    root = folder.resolve()
    for line, row in enumerate(df.itertuples(index=False), start=2):
        where = f"{listing_csv}: line {line} ({row.path!r})"
        if not row.path or object_key(row.path) is None or row.path == LISTING:
            raise SiteError(f"{where}: not a relative path inside the folder")
        path = folder / row.path
        if path.is_symlink() or not path.resolve().is_relative_to(root):
            raise SiteError(f"{where}: a link, or it leads outside {folder}; not published")
        if not path.is_file():
            raise SiteError(f"{where}: file not found")
        content_type(row.path)
        data = path.read_bytes()
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if str(len(data)) != str(row.size) or md5 != row.md5:
            raise SiteError(
                f"{where}: changed since it was listed (size {len(data)}, MD5 {md5}; listed "
                f"{row.size}, {row.md5}); rebuild the folder instead of editing it"
            )
    dup = df["path"].duplicated()
    if dup.any():
        raise SiteError(f"{listing_csv}: {df['path'][dup].iloc[0]!r} listed twice")
    return df[list(_LISTING_COLUMNS)]


def publish_site(
    folder: str | os.PathLike,
    cfg: UploadConfig,
    out_csv: str | os.PathLike,
    out_json: str | os.PathLike,
    *,
    session: boto3.Session | None = None,
) -> UploadStats:
    """Upload the files `folder/files.csv` lists under `cfg`'s bucket and prefix; write the
    manifest (see the module docstring) to `out_csv` and `out_json`."""
    folder = Path(folder)
    listing = read_listing(folder)
    prefix = cfg.prefix
    keys = [object_key(p, prefix) for p in listing["path"]]
    files = [
        (key, folder / path, f"{folder / LISTING}: line {i + 2} ({path})")
        for i, (key, path) in enumerate(zip(keys, listing["path"], strict=True))
    ]
    stats = upload_files(files, cfg, session=session, content_type=content_type)
    urls = object_urls(keys, stats, cfg)
    manifest = pd.DataFrame(
        {
            "key": keys,
            "path": listing["path"],
            "size": listing["size"].astype(int),
            "md5": listing["md5"],
            "content_type": [content_type(k) for k in keys],
            "url": urls,
        }
    )
    write_csv(manifest, out_csv)
    write_text(json.dumps(manifest.to_dict(orient="records"), indent=1) + "\n", out_json)
    page = manifest.loc[manifest["path"] == "web/index.html", "url"]
    if len(page):
        log.info("the study's page: %s?participant=<id>", page.iloc[0])
    log.info(
        "published %d file(s) of %s to bucket %s, prefix %r: %d uploaded, %d unchanged",
        len(manifest), folder, stats.bucket, prefix, stats.uploaded, stats.skipped,
    )  # fmt: skip
    return stats
