"""Polite fetching around img2dataset: robots.txt and a per-host rate limit.

img2dataset already honours X-Robots-Tag opt-out headers and sends our token in its User-Agent; it
has no robots.txt check and no per-host rate limit. :func:`polite_fetch` adds both in front of
img2dataset's own ``download_image`` (its fetch function, looked up by name on every call), which
:func:`installed` swaps in for the duration of a download. The limit holds per download process:
with ``P`` processes or Dask workers fetching at once, a host sees at most ``P x`` the rate.

robots.txt follows RFC 9309: a 4xx answer (no robots.txt) allows everything, a 5xx answer or an
unreachable host disallows everything for that host; rules are matched against our token.
"""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit
from urllib.robotparser import RobotFileParser

import img2dataset.downloader as i2d_downloader

ROBOTS_ERROR_PREFIX = "robots.txt disallows"
_original_download_image = i2d_downloader.download_image


@dataclass
class HostPolicy:
    """What every fetch in this process must respect."""

    user_agent_token: str
    respect_robots_txt: bool = True
    max_requests_per_second: float = 5.0
    robots_timeout: float = 10.0
    _robots: dict[str, RobotFileParser] = field(default_factory=dict, repr=False)
    _next_slot: dict[str, float] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _host_locks: dict[str, threading.Lock] = field(default_factory=dict, repr=False)

    def _host_lock(self, host: str) -> threading.Lock:
        with self._lock:
            return self._host_locks.setdefault(host, threading.Lock())

    def allowed(self, url: str) -> bool:
        """Whether the host's robots.txt lets our token fetch ``url`` (fetched once per host)."""
        parts = urlsplit(url)
        if not self.respect_robots_txt or parts.scheme not in ("http", "https"):
            return True
        origin = f"{parts.scheme}://{parts.netloc}"
        with self._host_lock(origin):
            parser = self._robots.get(origin)
            if parser is None:
                parser = self._robots[origin] = self._fetch_robots(origin)
        return parser.can_fetch(self.user_agent_token, url)

    def _fetch_robots(self, origin: str) -> RobotFileParser:
        parser = RobotFileParser(origin + "/robots.txt")
        request = urllib.request.Request(parser.url, headers={"User-Agent": self.user_agent_token})
        try:
            with urllib.request.urlopen(request, timeout=self.robots_timeout) as response:
                parser.parse(response.read().decode("utf-8", errors="replace").splitlines())
        except urllib.error.HTTPError as err:
            if 400 <= err.code < 500:
                parser.allow_all = True
            else:
                parser.disallow_all = True
        except (urllib.error.URLError, OSError):
            parser.disallow_all = True
        return parser

    def wait_turn(self, url: str) -> None:
        """Block until this host may be sent another request (a simple per-host spacing limiter)."""
        if self.max_requests_per_second <= 0:
            return
        host = urlsplit(url).netloc
        interval = 1.0 / self.max_requests_per_second
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot.get(host, now))
            self._next_slot[host] = slot + interval
        delay = slot - now
        if delay > 0:
            time.sleep(delay)


_policy: HostPolicy | None = None


def polite_fetch(row, timeout, user_agent_token, disallowed_header_directives):
    """Drop-in for img2dataset's ``download_image``: robots.txt check, rate limit, then the real fetch."""
    key, url = row
    if _policy is not None:
        if not _policy.allowed(url):
            return key, None, f"{ROBOTS_ERROR_PREFIX} {url} for user-agent {_policy.user_agent_token!r}"
        _policy.wait_turn(url)
    return _original_download_image(row, timeout, user_agent_token, disallowed_header_directives)


_install_lock = threading.Lock()
_install_count = 0


@contextmanager
def installed(policy: HostPolicy) -> Iterator[HostPolicy]:
    """Route img2dataset's fetches in this process through ``policy`` while the block runs.

    Concurrent downloads in one process (threads of a task runner) share the first policy installed,
    so the per-host limit holds across them.
    """
    global _policy, _install_count
    with _install_lock:
        if _install_count == 0:
            _policy = policy
            i2d_downloader.download_image = polite_fetch
        _install_count += 1
    try:
        yield _policy
    finally:
        with _install_lock:
            _install_count -= 1
            if _install_count == 0:
                i2d_downloader.download_image = _original_download_image
                _policy = None
