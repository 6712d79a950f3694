"""A local S3-compatible server (moto's `moto_server`) on 127.0.0.1, for runs whose upload
endpoint is local and for the tests. It keeps objects in memory only while it runs."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

STARTUP_TIMEOUT_S = 30
# Credentials moto accepts; they open nothing anywhere else.
LOCAL_CREDENTIALS = {"aws_access_key_id": "lwise-local", "aws_secret_access_key": "lwise-local"}


def session_for(endpoint_setting: str | None):
    """The boto3 session for `upload.endpoint_url`: moto accepts any keys, so the "local"
    server gets fixed ones; None (AWS) and real URLs use the standard AWS credential chain."""
    if endpoint_setting != "local":
        return None
    import boto3

    return boto3.Session(**LOCAL_CREDENTIALS)


def moto_executable() -> Path:
    """moto_server beside this Python (a virtual environment), else on PATH."""
    exe = Path(sys.executable).with_name("moto_server")
    if exe.is_file():
        return exe
    found = shutil.which("moto_server")
    if found is None:
        raise FileNotFoundError(f"{exe} not found, nor moto_server on PATH; install moto[server]")
    return Path(found)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP status means the server is up
    except OSError:
        return False


def _die_with_parent() -> None:
    """In the child before exec: Linux sends SIGTERM when the process that started it dies,
    so a killed Snakemake does not leave the server holding its port."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):  # not Linux: the pid file below still cleans up
        pass


def start_server(exe: Path, port: int, log) -> subprocess.Popen | None:
    """Start the server on `port`; None if it exited (e.g. the port was taken meanwhile)."""
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=_die_with_parent,
    )
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return None
        if answers(f"http://127.0.0.1:{port}/"):
            return proc
        time.sleep(0.1)
    proc.kill()
    proc.wait()
    raise TimeoutError(f"moto_server did not answer on port {port} within {STARTUP_TIMEOUT_S}s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


class LocalServer:
    """A moto_server on 127.0.0.1:`port`, started and stopped around a workflow run.

    Its pid is kept in `state_dir`, so a run that finds the port taken by a server an earlier,
    killed run left behind stops that one instead of failing."""

    def __init__(self, port: int, state_dir: str | Path = ".snakemake"):
        self.port = port
        self.proc: subprocess.Popen | None = None
        self.pid_file = Path(state_dir) / f"lwise-local-s3-{port}.pid"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _stop_leftover(self) -> bool:
        """Stop a server of ours recorded in the pid file; True if one was stopped."""
        try:
            pid = int(self.pid_file.read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except (OSError, ValueError):
            return False
        if not any(part.endswith(b"moto_server") for part in cmdline):
            return False  # the pid was reused by something else
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while answers(self.url) and time.monotonic() < deadline:
            time.sleep(0.1)
        self.pid_file.unlink(missing_ok=True)
        return not answers(self.url)

    def start(self) -> None:
        if answers(self.url) and not self._stop_leftover():
            raise RuntimeError(
                f"port {self.port} is already in use; set upload.local_port to a free port"
            )
        self.proc = start_server(moto_executable(), self.port, subprocess.DEVNULL)
        if self.proc is None:
            raise RuntimeError(f"moto_server could not start on port {self.port}")
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.write_text(str(self.proc.pid))

    def stop(self) -> None:
        if self.proc is not None:
            stop_server(self.proc)
            self.proc = None
            self.pid_file.unlink(missing_ok=True)
