"""Upload an image set to S3 (or an S3-compatible store) and write a dirmap with object URLs.

A reimplementation of L-WISE `dataset_setup/upload_images_s3.py` with its problems fixed:
buckets can be created in any region (LocationConstraint), objects are private unless asked
otherwise, reruns skip objects whose MD5 already matches, uploads run in parallel with retries,
and the input dirmap is never overwritten.

Keys are the dirmap's `im_path` (with '/' separators) under an optional prefix, so every
version of a set (natural, each epsilon) gives an image the same relative key: the psych code
serves another version by swapping only the bucket name (or prefix) in the URL.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import mimetypes
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import boto3
import pandas as pd
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
)

from lwise.core.atomic import write_csv, write_text
from lwise.core.config import Section
from lwise.core.keys import object_key
from lwise.core.logs import progress
from lwise.data import dirmap
from lwise.data.dirmap import csv_lines
from lwise.publish.bucket import (
    CREDENTIALS_HINT,
    S3CredentialsError,
    S3UploadError,
    ensure_bucket,
    explain,
    make_client,
    retrying,
)
from lwise.publish.naming import US_EAST_1, bucket_name, key_prefix, object_url

log = logging.getLogger(__name__)

ADDRESSING_STYLES = ("auto", "path", "virtual")
SSE_MODES = (None, "AES256", "aws:kms")
# --- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class UploadConfig(Section):
    """Where and how to upload one image set.

    `bucket` and `key_prefix` are templates filled from `fields` (see `bucket_name`): one
    bucket per set (L-WISE style, e.g. "{prefix}-{dataset}-{version}") or one bucket with a key
    prefix per set. `endpoint_url` None means AWS; `region` None takes the boto3 default
    (AWS_DEFAULT_REGION / profile), else us-east-1. `retries` bounds both botocore's retries
    (throttling, 5xx, connection errors) and an outer retry of connection failures, with
    exponential backoff from `backoff_s`.
    """

    SECTION = "upload"

    bucket: str
    key_prefix: str
    endpoint_url: str | None  # the resolved URL: `from_config(cfg, endpoint_url=...)`
    region: str | None
    addressing_style: str
    public_read: bool
    sse: str | None
    kms_key_id: str | None
    max_workers: int
    retries: int
    backoff_s: float
    fields: Mapping[str, object] = field(default_factory=dict)  # not config: filled per set

    def __post_init__(self) -> None:
        if self.addressing_style not in ADDRESSING_STYLES:
            raise ValueError(
                f"addressing_style {self.addressing_style!r}: expected one of {ADDRESSING_STYLES}"
            )
        if self.sse not in SSE_MODES:
            raise ValueError(f"sse {self.sse!r}: expected one of {SSE_MODES}")
        if self.kms_key_id and self.sse != "aws:kms":
            raise ValueError("kms_key_id needs sse='aws:kms'")
        if self.max_workers < 1 or self.retries < 0 or self.backoff_s < 0:
            raise ValueError("max_workers must be >= 1, retries and backoff_s >= 0")

    @property
    def bucket_name(self) -> str:
        return bucket_name(self.bucket, **self.fields)

    @property
    def prefix(self) -> str:
        return key_prefix(self.key_prefix, **self.fields)


@dataclass(frozen=True)
class UploadStats:
    """What one `upload_image_set` or `upload_files` call did."""

    bucket: str
    prefix: str
    uploaded: int
    skipped: int
    region: str


# --- S3 calls ------------------------------------------------------------------------------------


def _remote_etags(client, bucket: str, prefix: str) -> dict[str, str]:
    """ETag (quotes stripped) of every object under `prefix`, from one listing."""
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {
        obj["Key"]: obj["ETag"].strip('"') for page in pages for obj in page.get("Contents", [])
    }


def _put_if_changed(
    client,
    bucket: str,
    key: str,
    path: Path,
    etag: str | None,
    extra: dict,
    *,
    content_type: str | None = None,
) -> bool:
    """Upload one file unless the object already holds the same bytes; True if uploaded.

    put_object sends a single part, whose ETag is the MD5 of the bytes, except under SSE-KMS;
    the MD5 is therefore also stored as metadata and checked when the ETag differs. The
    Content-Type is `content_type`, else guessed from the key's extension.
    """
    data = path.read_bytes()
    digest = hashlib.md5(data, usedforsecurity=False)
    md5 = digest.hexdigest()
    if etag is not None:
        if etag == md5:
            return False
        stored = client.head_object(Bucket=bucket, Key=key).get("Metadata", {}).get("md5")
        if stored == md5:
            return False
    client.put_object(
        Bucket=bucket,
        Key=key,
        Body=data,
        ContentMD5=base64.b64encode(digest.digest()).decode(),
        ContentType=content_type or mimetypes.guess_type(key)[0] or "application/octet-stream",
        Metadata={"md5": md5},
        **extra,
    )
    return True


# --- the upload ----------------------------------------------------------------------------------


def _object_keys(df: pd.DataFrame, source: Path, prefix: str) -> pd.Series:
    object_keys = df["im_path"].map(lambda p: object_key(p, prefix))
    bad = object_keys.isna()
    if bad.any():
        raise dirmap.DirmapError(
            f"{source}: 'im_path' must be relative and stay inside the image root "
            f"(no '..', no drive) at line(s) {csv_lines(df, bad)}"
        )
    return object_keys


def upload_files(
    files: Sequence[tuple[str, Path, str]],
    cfg: UploadConfig,
    *,
    session: boto3.Session | None = None,
    content_type: Callable[[str], str] | None = None,
    unit: str = "file",
) -> UploadStats:
    """Upload local files to `cfg`'s bucket, skipping objects that already hold the same bytes.

    `files`: (object key, local file, what an error names) per file; keys should lie under
    `cfg.prefix`, whose listing tells which objects are already in place. `content_type(key)`
    gives each object's Content-Type (default: guessed from the extension). The bucket is
    created if missing; credentials, retries and errors as in `upload_image_set`.
    """
    bucket, prefix = cfg.bucket_name, cfg.prefix
    session = session or boto3.Session()
    if session.get_credentials() is None:
        raise S3CredentialsError(
            f"no AWS credentials found for bucket {bucket!r}; {CREDENTIALS_HINT}"
        )
    region = cfg.region or session.region_name or US_EAST_1
    client = make_client(session, cfg, region)
    ensure_bucket(client, bucket, region, cfg)
    try:
        etags = _remote_etags(client, bucket, prefix)
    except (ClientError, BotoCoreError) as err:
        raise explain(err, bucket, "ListBucket") from err

    extra: dict = {}
    if cfg.public_read:
        extra["ACL"] = "public-read"
    if cfg.sse:
        extra["ServerSideEncryption"] = cfg.sse
    if cfg.kms_key_id:
        extra["SSEKMSKeyId"] = cfg.kms_key_id

    def send(i: int) -> bool:
        key, path, where = files[i]
        kind = content_type(key) if content_type else None
        try:
            return retrying(
                lambda: _put_if_changed(
                    client, bucket, key, path, etags.get(key), extra, content_type=kind
                ),
                attempts=cfg.retries,
                backoff=cfg.backoff_s,
                what=where,
            )
        except OSError as err:
            raise S3UploadError(f"{where}: cannot read the {unit}: {err}") from err
        except (ClientError, BotoCoreError) as err:
            raise explain(err, bucket, "PutObject", where) from err

    log.info(
        "uploading %d %s(s) to bucket %s, prefix %r, endpoint %s",
        len(files),
        unit,
        bucket,
        prefix,
        cfg.endpoint_url or "AWS",
    )
    uploaded = skipped = 0
    pool = ThreadPoolExecutor(max_workers=cfg.max_workers)
    try:
        with progress(total=len(files), unit=unit, desc=f"s3://{bucket}/{prefix}") as bar:
            for future in as_completed([pool.submit(send, i) for i in range(len(files))]):
                if future.result():
                    uploaded += 1
                else:
                    skipped += 1
                bar.update()
    except BaseException:
        log.error("upload stopped after %d upload(s); a rerun skips what was sent", uploaded)
        raise
    finally:
        # On failure drop the queued uploads instead of sending them after the error.
        pool.shutdown(wait=True, cancel_futures=True)

    log.info("bucket %s: %d uploaded, %d already present", bucket, uploaded, skipped)
    return UploadStats(bucket, prefix, uploaded, skipped, region)


def object_urls(keys, stats: UploadStats, cfg: UploadConfig) -> list[str]:
    """The URL of each uploaded object `keys`, in the bucket and region `stats` reports."""
    return [
        object_url(
            stats.bucket,
            key,
            region=stats.region,
            endpoint_url=cfg.endpoint_url,
            addressing_style=cfg.addressing_style,
        )
        for key in keys
    ]


def upload_image_set(
    dirmap_csv: str | os.PathLike,
    image_root: str | os.PathLike,
    cfg: UploadConfig,
    out_csv: str | os.PathLike,
    out_json: str | os.PathLike,
    *,
    session: boto3.Session | None = None,
) -> UploadStats:
    """Upload every image of a dirmap and write a new dirmap (CSV + JSON records) with `url`.

    Images are read from `image_root/im_path`. Credentials come from the standard boto3 chain
    (`session` overrides it, e.g. for tests). The bucket is created if missing. Objects that
    already hold the same bytes are skipped, so a rerun after a failure sends only what is
    missing; skipped objects keep their ACL and encryption, so changing `public_read` or `sse`
    for a set already uploaded needs a new bucket or prefix. The outputs are written atomically
    and only after every image is in place.
    """
    dirmap_csv, image_root = Path(dirmap_csv), Path(image_root)
    for out in (out_csv, out_json):
        if Path(out).resolve() == dirmap_csv.resolve():
            raise ValueError(f"{out}: the output must not overwrite the input dirmap")
    df = dirmap.read(dirmap_csv, check_files=False)
    keys = _object_keys(df, dirmap_csv, cfg.prefix)
    missing = dirmap.problems(df, image_root)
    if missing:
        raise dirmap.DirmapError(f"{dirmap_csv}: " + "; ".join(missing))

    files = [
        (key, image_root / im_path, f"{dirmap_csv}: line {i + 2} ({im_path})")
        for i, (key, im_path) in enumerate(zip(keys, df["im_path"], strict=True))
    ]
    stats = upload_files(files, cfg, session=session, unit="image")

    # im_path stays resolvable from the new CSV's folder; the object key is kept beside it.
    local = df["im_path"].map(lambda p: str(image_root / p))
    out = df.assign(
        im_path=dirmap.relative_to(local, Path(out_csv).parent),
        s3_key=keys,
        url=object_urls(keys, stats, cfg),
    )
    write_csv(out, out_csv)
    # Through pandas for NaN -> null and numpy scalars, re-dumped to keep '/' unescaped in URLs.
    records = json.loads(out.to_json(orient="records"))
    write_text(json.dumps(records, indent=1, ensure_ascii=False) + "\n", out_json)
    return stats
