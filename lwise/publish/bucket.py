"""S3 clients, buckets and errors for the uploads (`lwise.publish.s3`, `lwise.publish.site`):
a client with the configured addressing, retries and endpoint; the bucket found or created in
its region with the configured access; botocore's errors turned into messages that name the
bucket, the operation and what to do."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import boto3
from botocore.config import Config
from botocore.exceptions import (
    BotoCoreError,
    ClientError,
    HTTPClientError,
    NoCredentialsError,
    PartialCredentialsError,
)
from botocore.exceptions import ConnectionError as BotoConnectionError

from lwise.publish.naming import US_EAST_1

if TYPE_CHECKING:
    from lwise.publish.s3 import UploadConfig

__all__ = [
    "CREDENTIALS_HINT",
    "S3AccessDenied",
    "S3CredentialsError",
    "S3UploadError",
    "make_client",
    "ensure_bucket",
    "explain",
    "retrying",
]

log = logging.getLogger(__name__)

CREDENTIALS_HINT = (
    "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (plus AWS_SESSION_TOKEN for temporary "
    "credentials), or AWS_PROFILE naming a profile in ~/.aws/credentials"
)
_DENIED = {"AccessDenied", "Forbidden", "403", "AllAccessDisabled"}
_BAD_CREDENTIALS = {"InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken"}
# Botocore retries these itself; the wrapper covers failures that outlast its attempts.
_TRANSIENT = (BotoConnectionError, HTTPClientError)


class S3UploadError(RuntimeError):
    """An upload could not be completed; the message names the bucket and what failed."""


class S3CredentialsError(S3UploadError):
    """No usable AWS credentials."""


class S3AccessDenied(S3UploadError):
    """The credentials lack a permission; the message names the bucket and operation."""


def make_client(session: boto3.Session, cfg: UploadConfig, region: str):
    options = {
        "region_name": region,
        "retries": {"mode": "standard", "total_max_attempts": cfg.retries + 1},
        "max_pool_connections": max(10, cfg.max_workers),
    }
    if cfg.endpoint_url:
        # Virtual-hosted style needs wildcard DNS, which local S3-compatible servers rarely have;
        # boto3's default checksum headers break some of them.
        style = "path" if cfg.addressing_style == "auto" else cfg.addressing_style
        options |= {
            "s3": {"addressing_style": style},
            "request_checksum_calculation": "when_required",
            "response_checksum_validation": "when_required",
        }
    elif cfg.addressing_style != "auto":
        options["s3"] = {"addressing_style": cfg.addressing_style}
    return session.client("s3", endpoint_url=cfg.endpoint_url, config=Config(**options))


def _code(err: ClientError) -> str:
    """The S3 error code of a reply ("" when it has none)."""
    return err.response.get("Error", {}).get("Code", "")


def explain(err: Exception, bucket: str, operation: str, where: str = "") -> Exception:
    """An S3UploadError naming bucket, operation and (optionally) the dirmap line."""
    place = f"{where}: " if where else ""
    if isinstance(err, NoCredentialsError | PartialCredentialsError):
        return S3CredentialsError(
            f"{place}no usable AWS credentials for bucket {bucket!r} ({err}); {CREDENTIALS_HINT}"
        )
    if isinstance(err, ClientError):
        code, message = _code(err), err.response.get("Error", {}).get("Message", "")
        if code in _BAD_CREDENTIALS:
            return S3CredentialsError(
                f"{place}{operation} on bucket {bucket!r}: credentials rejected ({code}); "
                f"{CREDENTIALS_HINT}"
            )
        if code in _DENIED:
            return S3AccessDenied(
                f"{place}{operation} on bucket {bucket!r}: access denied ({code}); the "
                f"credentials need permission s3:{operation} on this bucket"
            )
        if code == "AccessControlListNotSupported":
            return S3UploadError(
                f"{place}{operation} on bucket {bucket!r}: public_read needs object ACLs, but the "
                "bucket has them disabled (Object Ownership = BucketOwnerEnforced); enable ACLs "
                "or make the objects public with a bucket policy and public_read off"
            )
        return S3UploadError(f"{place}{operation} on bucket {bucket!r} failed: {code} {message}")
    return S3UploadError(f"{place}{operation} on bucket {bucket!r} failed: {err!r}")


def retrying(call: Callable[[], bool], *, attempts: int, backoff: float, what: str) -> bool:
    """`call()`, retried up to `attempts` times on connection errors, with jittered backoff."""
    attempt = 0
    while True:
        try:
            return call()
        except _TRANSIENT as err:
            if attempt == attempts:
                raise
            delay = backoff * 2**attempt * random.uniform(0.5, 1.0)
            attempt += 1
            log.warning("%s: %s; retrying in %.1fs (%d/%d)", what, err, delay, attempt, attempts)
            time.sleep(delay)


def ensure_bucket(client, bucket: str, region: str, cfg: UploadConfig) -> None:
    """Create `bucket` in `region` if missing; refuse one that lives in another region."""
    try:
        head = client.head_bucket(Bucket=bucket)
    except ClientError as err:
        status = err.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 301:
            actual = err.response["ResponseMetadata"]["HTTPHeaders"].get("x-amz-bucket-region")
            raise S3UploadError(
                f"bucket {bucket!r} is in region {actual!r}, not {region!r}; set region: {actual}"
            ) from err
        if status == 403:
            # A HEAD reply has no body, so no error code: ask again with a GET to tell rejected
            # credentials from a bucket that is not ours.
            try:
                client.list_objects_v2(Bucket=bucket, MaxKeys=1)
            except ClientError as probe:
                if _code(probe) in _BAD_CREDENTIALS:
                    raise explain(probe, bucket, "HeadBucket") from err
            except BotoCoreError:
                pass
            raise S3AccessDenied(
                f"HeadBucket on bucket {bucket!r}: access denied; either another account owns a "
                "bucket of that name (choose another) or the credentials lack s3:ListBucket on it"
            ) from err
        if status != 404:
            raise explain(err, bucket, "HeadBucket") from err
    except BotoCoreError as err:
        raise explain(err, bucket, "HeadBucket") from err
    else:
        actual = head.get("BucketRegion")  # botocore's parse of x-amz-bucket-region
        if actual and actual != region:
            raise S3UploadError(
                f"bucket {bucket!r} is in region {actual!r}, not {region!r}; set region: {actual}"
            )
        return
    request: dict = {"Bucket": bucket}
    if region != US_EAST_1:
        # us-east-1 is the one region that rejects an explicit LocationConstraint.
        request["CreateBucketConfiguration"] = {"LocationConstraint": region}
    if cfg.public_read:
        request["ObjectOwnership"] = "BucketOwnerPreferred"
    try:
        client.create_bucket(**request)
        log.info("created bucket %s in %s", bucket, region)
        if cfg.public_read:
            # New buckets block public ACLs; public_read is an explicit request to allow them.
            client.delete_public_access_block(Bucket=bucket)
    except ClientError as err:
        if _code(err) == "BucketAlreadyOwnedByYou":
            return
        if _code(err) == "BucketAlreadyExists":
            raise S3UploadError(
                f"bucket {bucket!r} already exists and belongs to another account; "
                "bucket names are global, so choose another name (template or prefix)"
            ) from err
        raise explain(err, bucket, "CreateBucket") from err
