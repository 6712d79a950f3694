"""A real S3-compatible server for tests: `moto_server` on 127.0.0.1 in a subprocess.

Requires moto[server]; the `moto_server` executable is looked up next to the running Python.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

STARTUP_TIMEOUT_S = 30
# Fake credentials, and no reading of the developer's real AWS files or instance metadata.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": os.path.join(os.sep, "nonexistent", "aws-config"),
    "AWS_SHARED_CREDENTIALS_FILE": os.path.join(os.sep, "nonexistent", "aws-credentials"),
    "AWS_EC2_METADATA_DISABLED": "true",
}


def moto_executable() -> Path:
    exe = Path(sys.executable).with_name("moto_server")
    if not exe.is_file():
        raise FileNotFoundError(f"{exe} not found; install the test extra (moto[server])")
    return exe


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP status means the server is up
    except OSError:
        return False


def _start(exe: Path, port: int, log) -> subprocess.Popen | None:
    """Start the server on `port`; None if it exited (e.g. the port was taken meanwhile)."""
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        if _answers(f"http://127.0.0.1:{port}/"):
            return proc
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise TimeoutError(f"moto_server did not answer on port {port} within {STARTUP_TIMEOUT_S}s")


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


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
            chosen = port or _free_port()
            proc = _start(exe, chosen, log)
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
            _stop(proc)
