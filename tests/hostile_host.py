"""A hostile HTTP host on 127.0.0.1 for fetch-policy tests: redirects anywhere, huge and dripping bodies, bombs.

Routes (``path`` is matched after percent-decoding):
/img/<n>.jpg             a valid JPEG
/redirect?to=<url>       302 to ``url`` (any scheme, any host); /redirect-loop/<n> redirects to itself forever
/big                     ``big_bytes`` of JPEG-looking bytes with a true Content-Length
/big-unannounced         the same with no Content-Length (the body ends when the connection closes)
/drip                    a small body sent one byte every ``drip_seconds``
/bomb.png                a valid PNG header declaring 12000 x 12000 pixels (a decompression bomb), tiny body
/huge.png                a real 12000 x 12000 black PNG (~140 kB that decodes to 144 MB: slow to decode)
/wiki/File:Rosa canina ü.jpg   a JPEG at a path with a space and a non-ASCII letter (as Wikimedia's)
/busy/<n>.jpg?after=<v>  the first request of each path: 429 with ``Retry-After: v``; later ones a JPEG
/robots.txt              ``robots`` text
Every request is counted per decoded path in ``hits``.
"""

from __future__ import annotations

import contextlib
import struct
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs, unquote, urlsplit

from tests.http_host import LoopbackHost, QuietHandler, jpeg_bytes

WIKI_PATH = "/wiki/File:Rosa canina ü.jpg"


def png_header_declaring(width: int, height: int, complete: bool = False) -> bytes:
    """An 8-bit greyscale PNG declaring ``width x height``: all black if ``complete``, else one tiny IDAT (the
    header PIL reads before decoding is all there is)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    if complete:
        packer, row = zlib.compressobj(9), b"\0" * (width + 1)  # filter byte + pixels
        pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    else:
        pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


class HostileHost(LoopbackHost):
    def __init__(self, robots: str = "", big_bytes: int = 2_000_000, drip_seconds: float = 0.3) -> None:
        self.robots, self.big_bytes, self.drip_seconds = robots, big_bytes, drip_seconds
        self.hits: Counter[str] = Counter()
        self._huge: bytes | None = None
        host = self

        class Handler(QuietHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                parts = urlsplit(self.path)
                path = unquote(parts.path)
                host.hits[path] += 1
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                    host.answer(self, path, parse_qs(parts.query))

        super().__init__(Handler)

    def answer(self, handler: BaseHTTPRequestHandler, path: str, query: dict[str, list[str]]) -> None:
        def send(status: int, body: bytes, headers: dict[str, str], length: bool = True) -> None:
            handler.send_response(status)
            for k, v in headers.items():
                handler.send_header(k, v)
            if length:
                handler.send_header("Content-Length", str(len(body)))
            else:
                handler.send_header("Connection", "close")
                handler.close_connection = True
            handler.end_headers()
            handler.wfile.write(body)

        jpeg = {"Content-Type": "image/jpeg"}
        if path == "/robots.txt":
            send(200, self.robots.encode(), {"Content-Type": "text/plain"})
        elif path.startswith("/img/"):
            send(200, jpeg_bytes(int(path[5:-4])), jpeg)
        elif path == WIKI_PATH:
            send(200, jpeg_bytes(7), jpeg)
        elif path == "/redirect":
            send(302, b"", {"Location": query["to"][0]})
        elif path.startswith("/redirect-loop/"):
            send(302, b"", {"Location": f"/redirect-loop/{int(path.rsplit('/', 1)[1]) + 1}"})
        elif path == "/big":
            send(200, jpeg_bytes(3)[:4] + b"\0" * self.big_bytes, jpeg)
        elif path == "/big-unannounced":
            send(200, jpeg_bytes(3)[:4] + b"\0" * self.big_bytes, jpeg, length=False)
        elif path == "/drip":
            body = jpeg_bytes(4)
            send(200, b"", {**jpeg, "Content-Length": str(len(body))}, length=False)
            for i in range(len(body)):
                handler.wfile.write(body[i : i + 1])
                handler.wfile.flush()
                time.sleep(self.drip_seconds)
        elif path.startswith("/busy/"):  # 429 with Retry-After (query "after") to the first request of each path
            if self.hits[path] == 1:
                send(429, b"slow down", {"Retry-After": query["after"][0]})
            else:
                send(200, jpeg_bytes(5), jpeg)
        elif path == "/huge.png":
            send(200, self.huge_png(), {"Content-Type": "image/png"})
        elif path == "/bomb.png":
            send(200, png_header_declaring(12_000, 12_000), {"Content-Type": "image/png"})
        else:
            send(404, b"not found", {})

    def huge_png(self) -> bytes:
        if self._huge is None:
            self._huge = png_header_declaring(12_000, 12_000, complete=True)
        return self._huge
