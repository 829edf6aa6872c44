"""A local HTTP file server for download tests, with knobs to misbehave on purpose.

``serve_directory(root)`` serves ``root`` on 127.0.0.1 (a free port) and yields a
``ServerControl``: ``url`` is the base URL, ``requests`` records what arrived, and setting
``fail_next``, ``cut_next`` or ``ignore_range`` makes the next responses fail, stop short or
ignore ``Range``, the situations a downloader must survive.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit


@dataclass
class Request:
    path: str
    range: str | None  # the Range header as sent, None without one


@dataclass
class ServerControl:
    url: str
    fail_next: int = 0  # answer this many coming requests with 503
    cut_next: int | None = None  # send only this many body bytes of the next response, once
    ignore_range: bool = False  # answer Range requests with the whole file (200)
    requests: list[Request] = field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    server: _Server

    def do_GET(self) -> None:
        control = self.server.control
        control.requests.append(Request(urlsplit(self.path).path, self.headers.get("Range")))
        if control.fail_next > 0:
            control.fail_next -= 1
            self.send_error(503, "Service Unavailable (on purpose)")
            return
        path = (self.server.root / unquote(urlsplit(self.path).path).lstrip("/")).resolve()
        if not path.is_file() or not path.is_relative_to(self.server.root):
            self.send_error(404)
            return
        body = path.read_bytes()
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
        if match and not control.ignore_range:
            start = int(match.group(1))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            body = body[start:]
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if control.cut_next is not None:
            # The announced length stays; the connection closes early (HTTP/1.0 default).
            body, control.cut_next = body[: control.cut_next], None
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: test output should show failures, not access logs."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    root: Path
    control: ServerControl


@contextmanager
def serve_directory(root: Path) -> Iterator[ServerControl]:
    """Serve the files under ``root`` over HTTP on 127.0.0.1 while the block runs."""
    server = _Server(("127.0.0.1", 0), _Handler)
    server.root = root.resolve()
    server.control = ServerControl(url=f"http://127.0.0.1:{server.server_address[1]}")
    # A short poll interval: shutdown() waits for the next poll, 0.5 s by default.
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        yield server.control
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
