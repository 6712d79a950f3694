"""Bucket names, key prefixes and object URLs of uploaded image sets (S3 naming rules)."""

from __future__ import annotations

import re
import urllib.parse
from collections.abc import Mapping

US_EAST_1 = "us-east-1"


def _fill(template: str, fields: Mapping[str, object], what: str) -> str:
    try:
        return template.format(**{k: str(v) for k, v in fields.items()})
    except (KeyError, IndexError) as err:
        raise ValueError(f"{what} template {template!r}: no value for field {err}") from err


def bucket_name(template: str, **fields: object) -> str:
    """Fill `template` (e.g. "{prefix}-{dataset}-{version}") and sanitise it to S3 bucket rules.

    Lowercase; a '.' between digits becomes 'dot' (0.5 -> 0dot5, as the L-WISE batch scripts
    name buckets); any run of characters outside [a-z0-9.-] becomes '-'. Raises ValueError if
    the result still breaks the rules (3-63 characters, starts and ends with a letter or digit,
    no '..', not an IP address, no reserved prefix or suffix).
    """
    raw = _fill(template, fields, "bucket")
    name = re.sub(r"(?<=\d)\.(?=\d)", "dot", raw.lower())
    name = re.sub(r"[^a-z0-9.-]+", "-", name)
    name = re.sub(r"-{2,}", "-", name).strip("-.")
    problem = None
    if not 3 <= len(name) <= 63:
        problem = f"is {len(name)} characters long (S3 allows 3-63)"
    elif ".." in name:
        problem = "contains '..'"
    elif re.fullmatch(r"\d+\.\d+\.\d+\.\d+", name):
        problem = "looks like an IP address"
    # Reserved forms with '--' (xn--, --ol-s3) cannot occur: runs of '-' were collapsed.
    elif name.startswith(("sthree-", "amzn-s3-demo-")) or name.endswith("-s3alias"):
        problem = "uses a prefix or suffix that S3 reserves"
    if problem:
        raise ValueError(f"bucket template {template!r} gives {name!r}, which {problem}")
    return name


def key_prefix(template: str, **fields: object) -> str:
    """Fill a key-prefix template; '' or a '/'-separated prefix ending in '/'."""
    prefix = _fill(template, fields, "key prefix").replace("\\", "/").strip("/")
    return f"{prefix}/" if prefix else ""


def object_url(
    bucket: str,
    key: str,
    *,
    region: str,
    endpoint_url: str | None = None,
    addressing_style: str = "auto",
) -> str:
    """The object's URL: AWS virtual-hosted style, or path style on a custom endpoint.

    Path style is used on AWS too when asked, or when the bucket name has dots (the wildcard
    TLS certificate of virtual-hosted URLs does not cover them).
    """
    quoted = urllib.parse.quote(key, safe="/")
    if endpoint_url:
        base = endpoint_url.rstrip("/")
        if addressing_style == "virtual":
            parts = urllib.parse.urlsplit(base)
            return f"{parts.scheme}://{bucket}.{parts.netloc}{parts.path}/{quoted}"
        return f"{base}/{bucket}/{quoted}"
    host = "s3.amazonaws.com" if region == US_EAST_1 else f"s3.{region}.amazonaws.com"
    if addressing_style == "path" or "." in bucket:
        return f"https://{host}/{bucket}/{quoted}"
    return f"https://{bucket}.{host}/{quoted}"


