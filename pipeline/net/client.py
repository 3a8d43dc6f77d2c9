"""The one HTTP client every crawl request goes through (images and robots.txt): urllib3, guarded and bounded.

urllib3 does the HTTP, TLS (verification on, always) and keep-alive connection pooling; this module adds the
crawl's fetch policy around it:

- every new connection resolves its host through :meth:`AddressGuard.resolve` and connects only to the
  addresses checked (:class:`GuardedHTTPConnection`), so no request reaches loopback, private, link-local or
  metadata addresses unless the recipe allowlists them, DNS rebinding included;
- redirects are followed here, not by urllib3: each hop is percent-encoded, scheme-checked and handed to
  ``on_redirect`` (the caller's robots.txt check of the new host) before it is requested, at most
  ``max_redirects`` hops;
- a response body is refused beyond ``max_bytes`` (from ``Content-Length`` before reading, else while
  reading) and a request beyond ``max_seconds`` in total (checked between reads; each read also has the
  socket timeout, so the bound is ``max_seconds + timeout``).

Refusals raise :class:`BlockedAddress`, :class:`UnsafeURL` or :class:`FetchRefused`, network errors urllib3's;
each text starts with a prefix constant, which the download stage maps to the row's status.
"""

from __future__ import annotations

import email.utils
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urljoin

import urllib3
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NewConnectionError

from pipeline.net.addresses import AddressGuard, BlockedAddress
from pipeline.net.urls import UnsafeURL, checked_uri

REDIRECT_STATUSES = (301, 302, 303, 307, 308)
READ_CHUNK = 1 << 16
TOO_LARGE_PREFIX = "too large"
TOO_SLOW_PREFIX = "too slow"
REDIRECT_LIMIT_PREFIX = "too many redirects"


class FetchRefused(Exception):
    """The fetch policy refused a response (size, time, redirects); the text starts with one of the prefixes."""


class HTTPStatusError(Exception):
    """A final answer other than 2xx; the text reads like urllib's (``HTTP Error 404: Not Found``)."""

    def __init__(self, status: int, reason: str | None) -> None:
        super().__init__(f"HTTP Error {status}: {reason or ''}".rstrip())
        self.status = status


@dataclass(frozen=True)
class FetchLimits:
    timeout: float = 10.0  # seconds per connect and per read
    max_seconds: float = 60.0  # seconds per request, redirects and body included
    max_bytes: int = 30_000_000  # body bytes; beyond this the response is refused (or truncated, see get())
    max_redirects: int = 5


@dataclass(frozen=True)
class Fetched:
    url: str  # the final URL, after redirects
    status: int
    reason: str | None  # the server's reason phrase ("Not Found", or its own wording)
    headers: urllib3.HTTPHeaderDict
    body: bytes


class _GuardedConnectionMixin:
    """``_new_conn`` replaced: resolve through the guard, connect only to the addresses it checked."""

    address_guard: AddressGuard  # set on the per-client subclasses made by _guarded_pools()

    def _new_conn(self) -> socket.socket:
        targets = self.address_guard.resolve(self._dns_host, self.port)  # raises BlockedAddress, not OSError
        last_error: OSError | None = None
        for family, sockaddr in targets:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                for level, option, value in self.socket_options or ():
                    sock.setsockopt(level, option, value)
                sock.settimeout(urllib3.Timeout.resolve_default_timeout(self.timeout))
                sock.connect(sockaddr)
                return sock
            except TimeoutError as err:
                sock.close()
                raise ConnectTimeoutError(self, f"Connection to {self.host} timed out ({self.timeout} s)") from err
            except OSError as err:
                sock.close()
                last_error = err
        raise NewConnectionError(self, f"Failed to establish a new connection: {last_error}")


def _guarded_pools(guard: AddressGuard) -> dict[str, type[HTTPConnectionPool]]:
    """urllib3 pool classes (by scheme) whose connections all go through ``guard``."""
    http = type("GuardedHTTPConnection", (_GuardedConnectionMixin, HTTPConnection), {"address_guard": guard})
    https = type("GuardedHTTPSConnection", (_GuardedConnectionMixin, HTTPSConnection), {"address_guard": guard})
    return {
        "http": type("GuardedHTTPConnectionPool", (HTTPConnectionPool,), {"ConnectionCls": http}),
        "https": type("GuardedHTTPSConnectionPool", (HTTPSConnectionPool,), {"ConnectionCls": https}),
    }


class GuardedClient:
    """A thread-safe pool of keep-alive connections per host, every one made through ``guard``."""

    def __init__(
        self,
        guard: AddressGuard,
        limits: FetchLimits,
        headers: Mapping[str, str],
        connections_per_host: int = 8,
        ca_file: str | None = None,
    ) -> None:
        self.limits = limits
        self.headers = dict(headers)
        tls = {"ca_certs": ca_file} if ca_file else {}  # verification stays on either way (CERT_REQUIRED)
        self.pools = urllib3.PoolManager(num_pools=256, maxsize=connections_per_host, retries=False, **tls)
        self.pools.pool_classes_by_scheme = _guarded_pools(guard)

    def get(self, url: str, on_redirect: Callable[[str], None] | None = None, truncate: bool = False) -> Fetched:
        """GET ``url`` under the limits; ``truncate`` keeps the first ``max_bytes`` instead of refusing.

        ``on_redirect(next_url)`` runs before each hop is requested and refuses it by raising.
        """
        limits = self.limits
        deadline = time.monotonic() + limits.max_seconds
        current = checked_uri(url)
        for _ in range(limits.max_redirects + 1):
            remaining = max(deadline - time.monotonic(), 0.001)
            timeout = urllib3.Timeout(connect=min(limits.timeout, remaining), read=min(limits.timeout, remaining))
            response = self.pools.request(
                "GET",
                current,
                headers=self.headers,
                redirect=False,
                preload_content=False,
                decode_content=False,  # no unasked-for gzip expanded past the byte cap
                timeout=timeout,
            )
            try:
                location = response.headers.get("Location")
                if response.status in REDIRECT_STATUSES and location:
                    _discard_body(response)
                    current = checked_uri(urljoin(current, location))
                    if on_redirect is not None:
                        on_redirect(current)
                    continue
                body = _read_capped(response, current, limits.max_bytes, deadline, truncate)
                return Fetched(current, response.status, response.reason, response.headers, body)
            finally:
                response.release_conn()
        raise FetchRefused(f"{REDIRECT_LIMIT_PREFIX}: more than {limits.max_redirects} from {url}")

    def clear(self) -> None:
        self.pools.clear()


def _discard_body(response: urllib3.BaseHTTPResponse) -> None:
    """Make a response's connection reusable: drain a short body, close the connection on a long or unknown one."""
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) <= READ_CHUNK:
        response.drain_conn()
    else:
        response.close()


def _read_capped(
    response: urllib3.BaseHTTPResponse, url: str, max_bytes: int, deadline: float, truncate: bool
) -> bytes:
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > max_bytes and not truncate:
        response.close()  # do not drain a body we refuse: the connection is not reused
        raise FetchRefused(f"{TOO_LARGE_PREFIX}: {url} declares {declared} bytes (limit {max_bytes})")
    chunks, size = [], 0
    while True:
        chunk = response.read1(READ_CHUNK)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            response.close()
            if truncate:
                return b"".join(chunks)[:max_bytes]
            raise FetchRefused(f"{TOO_LARGE_PREFIX}: {url} sent more than {max_bytes} bytes")
        if time.monotonic() > deadline:
            response.close()
            raise FetchRefused(f"{TOO_SLOW_PREFIX}: {url} still sending after the request's time limit")


__all__ = [
    "BlockedAddress",
    "FetchLimits",
    "FetchRefused",
    "Fetched",
    "GuardedClient",
    "HTTPStatusError",
    "UnsafeURL",
]


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` value asks for (delay-seconds or an HTTP-date); None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if moment.tzinfo is None:  # RFC 9110 dates are GMT
        return None
    return max(0.0, moment.timestamp() - (time.time() if now is None else now))
