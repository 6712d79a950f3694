"""Pseudonymous participant keys for outputs that people read (tables, the HTML report).

A participant's key is a keyed hash (HMAC-SHA256) of their identifier with a salt that never
enters `results/`: the environment variable LWISE_PARTICIPANT_SALT, or else a random salt kept
in `.lwise/participant-salt` in the working directory (created on first use, readable only by
its owner, git-ignored). The same salt gives the same keys across runs, so tables stay
comparable; without the salt, keys cannot be traced back to identifiers.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from collections.abc import Iterable
from pathlib import Path

SALT_ENV = "LWISE_PARTICIPANT_SALT"
SALT_FILE = Path(".lwise") / "participant-salt"


def participant_salt(path: Path = SALT_FILE) -> bytes:
    """The salt: from the environment, else from `path` (created with 32 random bytes)."""
    if os.environ.get(SALT_ENV):
        return os.environ[SALT_ENV].encode()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(secrets.token_hex(32))
    return path.read_text().strip().encode()


def pseudonyms(ids: Iterable[str], salt: bytes) -> list[str]:
    """`p-` and 12 hex digits of HMAC-SHA256(salt, id) for each identifier."""
    return [
        "p-" + hmac.new(salt, str(i).encode(), hashlib.sha256).hexdigest()[:12] for i in ids
    ]
