"""A real S3-compatible server for tests: `moto_server` on 127.0.0.1 in a subprocess.

Requires moto[server]; the `moto_server` executable is looked up next to the running Python.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from unittest import mock

from lwise.publish.s3local import free_port, moto_executable, start_server, stop_server

# Fake credentials, and no reading of the developer's real AWS files or instance metadata.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.path.join(os.sep, "nonexistent", "aws-config"),
    "AWS_SHARED_CREDENTIALS_FILE": os.path.join(os.sep, "nonexistent", "aws-credentials"),
    "AWS_EC2_METADATA_DISABLED": "true",
}


@contextlib.contextmanager
def moto_s3_server(port: int | None = None) -> Iterator[str]:
    """Run moto_server for the block and yield its endpoint URL (http://127.0.0.1:PORT).

    Inside the block the environment holds fake AWS credentials and points the AWS config
    files at nonexistent paths; both are restored afterwards. Without `port`, a free one is
    picked (and re-picked, a few times, if another process grabs it first).
    """
    exe = moto_executable()
    with tempfile.TemporaryFile() as log:
        proc = None
        for _ in range(1 if port else 3):
            chosen = port or free_port()
            proc = start_server(exe, chosen, log)
            if proc is not None:
                break
        if proc is None:
            log.seek(0)
            tail = log.read()[-2000:].decode(errors="replace")
            raise RuntimeError(f"moto_server exited at startup:\n{tail}")
        aws_env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        try:
            with mock.patch.dict(os.environ, aws_env | FAKE_AWS_ENV, clear=True):
                yield f"http://127.0.0.1:{chosen}"
        finally:
            stop_server(proc)
