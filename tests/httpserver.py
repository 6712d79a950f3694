"""A real HTTP file server on 127.0.0.1 with Range support and injectable faults."""

from __future__ import annotations

import contextlib
import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path


class FileServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, root: Path):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.requests: list[dict] = []  # path, Range and If-Range headers of every GET
        self.cut_after: int | None = None  # send this many body bytes, then drop the connection
        self.cuts_left = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, *args):  # keep test output quiet
        pass

    def do_GET(self):
        path = self.server.root / self.path.lstrip("/")
        rng = self.headers.get("Range")
        self.server.requests.append(
            {"path": self.path, "range": rng, "if_range": self.headers.get("If-Range")}
        )
        if not path.is_file():
            self.send_error(404)
            return
        data = path.read_bytes()
        etag = '"' + hashlib.sha256(data).hexdigest()[:16] + '"'
        if_range = self.headers.get("If-Range")
        if rng and if_range is not None and if_range != etag:
            rng = None  # RFC 9110: a changed file is sent whole
        start = 0
        if rng:
            start = int(rng.removeprefix("bytes=").split("-")[0])
            if start >= len(data):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.server.cuts_left and self.server.cut_after is not None:
            self.server.cuts_left -= 1
            self.wfile.write(body[: self.server.cut_after])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body)


@contextlib.contextmanager
def serve(root: Path):
    server = FileServer(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
