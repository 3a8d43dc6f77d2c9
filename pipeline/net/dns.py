"""A per-process DNS cache for the crawl: each host name is resolved once per TTL, not once per connection.

img2dataset resolves every URL anew (its most reported failure is the resolver giving up under load; its README
asks users to run a local caching resolver). One download process talks to a few hosts thousands of times, so
:class:`CachedResolver` keeps each ``(host, port)`` answer for ``ttl`` seconds and a failed lookup for
``negative_ttl``. It only saves lookups: :class:`~pipeline.net.addresses.AddressGuard` checks every answer,
cached or fresh, on every new connection, and a connection goes only to addresses it checked.
"""

from __future__ import annotations

import socket
import threading
import time

from pipeline.net import addresses

Answer = list[tuple[int, int, int, str, tuple]]  # getaddrinfo's


class CachedResolver:
    """``getaddrinfo(host, port, 0, SOCK_STREAM)`` with a TTL, thread-safe, bounded in entries."""

    def __init__(self, ttl: float = 300.0, negative_ttl: float = 30.0, max_entries: int = 65_536) -> None:
        self.ttl, self.negative_ttl, self.max_entries = ttl, negative_ttl, max_entries
        self._entries: dict[tuple[str, int], tuple[float, Answer | socket.gaierror]] = {}
        self._lock = threading.Lock()

    def __call__(self, host: str, port: int) -> Answer:
        key = (host.lower(), port)
        now = time.monotonic()
        with self._lock:
            expires, answer = self._entries.get(key, (0.0, None))
        if answer is None or now >= expires:
            try:
                answer = addresses.getaddrinfo(host, port, 0, socket.SOCK_STREAM)
                expires = now + self.ttl
            except socket.gaierror as err:
                answer, expires = err, now + self.negative_ttl
            with self._lock:
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()  # a crawl of a few hosts never gets here; a sweep of millions starts over
                self._entries[key] = (expires, answer)
        if isinstance(answer, socket.gaierror):
            raise answer
        return answer
