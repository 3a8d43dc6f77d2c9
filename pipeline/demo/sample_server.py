"""A loopback HTTP server for the bundled offline sample (and for tests and benchmarks).

Serves a folder on 127.0.0.1 only, HTTP/1.1 with keep-alive as real image hosts do, or HTTPS given a certificate
and key. Files under ``optout/`` are sent with ``X-Robots-Tag: noai`` so the opt-out path is exercised for real;
a ``robots.txt`` in the folder is served as is.
"""

from __future__ import annotations

import functools
import ssl
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

OPTOUT_PREFIX = "/optout/"


class _Handler(SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive (every answer has a Content-Length)

    def end_headers(self) -> None:
        if self.path.startswith(OPTOUT_PREFIX):
            self.send_header("X-Robots-Tag", "noai, noimageai")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - upstream signature
        pass  # one line per image would drown the build's own log


class SampleServer:
    """``with SampleServer(folder) as server: server.url`` -> ``http://127.0.0.1:<port>/``.

    ``tls=(certificate_file, key_file)`` serves HTTPS instead (each connection's handshake runs in its own thread).
    """

    def __init__(self, folder: str | Path, port: int = 0, tls: tuple[str, str] | None = None) -> None:
        self.folder = Path(folder).resolve()
        if not self.folder.is_dir():
            raise FileNotFoundError(f"sample folder to serve does not exist: {self.folder}")
        handler = functools.partial(_Handler, directory=str(self.folder))
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self._httpd.daemon_threads = True
        self.scheme = "https" if tls else "http"
        if tls:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(*tls)
            self._httpd.socket = context.wrap_socket(
                self._httpd.socket, server_side=True, do_handshake_on_connect=False
            )
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="sample-server", daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"{self.scheme}://{host}:{port}/"

    def start(self) -> SampleServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> SampleServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
