"""A real HTTP image host on 127.0.0.1 for network tests: good, missing, broken, slow and opted-out images.

Routes: /img/<n>.jpg (a valid JPEG), /optout/<n>.jpg (X-Robots-Tag: noai), /garbage.jpg (undecodable),
/slow/<n>.jpg (answers after ``slow_seconds``), /error500.jpg, /robots.txt (``robots`` text, or the
status in ``robots_status``); anything else is 404. Every request is recorded with its time and headers.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image


def jpeg_bytes(n: int, size: int = 96) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (n * 37 % 256, n * 91 % 256, 120)).save(buf, "JPEG")
    return buf.getvalue()


class QuietHandler(BaseHTTPRequestHandler):
    """http.server's handler without its per-request log lines."""

    def log_message(self, *args) -> None:
        pass

    def reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
        """Send a whole response with its length; a client that hung up early is not an error here."""
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        with contextlib.suppress(BrokenPipeError):
            self.wfile.write(body)


class LoopbackHost:
    """A threaded HTTP server on 127.0.0.1 (a free port) around a handler class; ``with`` starts and stops it."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        # serve_forever's default 0.5 s poll would make each shutdown (and each test) half a second long
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


class ImageHost(LoopbackHost):
    def __init__(self, robots: str = "", robots_status: int = 200, slow_seconds: float = 3.0) -> None:
        self.robots, self.robots_status, self.slow_seconds = robots, robots_status, slow_seconds
        self.requests: list[tuple[float, str, dict[str, str]]] = []
        host = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                host.requests.append((time.monotonic(), self.path, dict(self.headers)))
                body, status, headers = host.route(self.path)
                self.reply(status, headers, body)

        super().__init__(Handler)

    def route(self, path: str) -> tuple[bytes, int, dict[str, str]]:
        jpeg = {"Content-Type": "image/jpeg"}
        if path == "/robots.txt":
            return self.robots.encode(), self.robots_status, {"Content-Type": "text/plain"}
        if path.startswith("/img/") and path[5:-4].isdigit():
            return jpeg_bytes(int(path[5:-4])), 200, jpeg
        if path.startswith("/optout/"):
            return jpeg_bytes(1), 200, {**jpeg, "X-Robots-Tag": "noai"}
        if path.startswith("/slow/"):
            time.sleep(self.slow_seconds)
            return jpeg_bytes(2), 200, jpeg
        if path == "/garbage.jpg":
            return b"this is not an image", 200, jpeg
        if path == "/error500.jpg":
            return b"boom", 500, {}
        return b"not found", 404, {}

    def paths(self) -> list[str]:
        return [p for _, p, _ in self.requests]
