"""Polite fetching for img2dataset: our User-Agent, robots.txt (RFC 9309) and a per-host rate limit.

img2dataset does the downloading, resizing and writing; its fetch function ``download_image`` sends a
browser-like User-Agent, checks ``X-Robots-Tag`` opt-outs and nothing else. :func:`polite_fetch` takes its
place (img2dataset looks it up by name on every call; :func:`installed` swaps it in for one download):

- the recipe's descriptive User-Agent on every request, robots.txt included;
- robots.txt per host, parsed by Protego (Scrapy's RFC 9309 parser: longest match, ``*`` and ``$``) and
  matched against our token. A 4xx answer allows everything; a 5xx answer or an unreachable host is
  "unreachable" (RFC 9309: assume disallowed) for ``robots_retry_seconds``, after which it is asked again;
  its rows end ``failed_download`` with the reason, not ``robots_disallowed``;
- a per-host spacing limit, per download process (with P shards fetching at once a host sees at most P times
  the rate);
- opt-out headers exactly as img2dataset decides them (its ``is_disallowed``).
"""

from __future__ import annotations

import io
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import img2dataset.downloader as i2d_downloader
from protego import Protego

from pipeline.stages.download.results import ROBOTS_ERROR_PREFIX, ROBOTS_UNREACHABLE_PREFIX

OPT_OUT_ERROR = "Use of image disallowed by X-Robots-Tag directive"  # img2dataset's own wording
_original_download_image = i2d_downloader.download_image


@dataclass
class HostPolicy:
    """What every fetch in this process must respect."""

    user_agent: str  # the full User-Agent header
    user_agent_token: str  # the product token matched in robots.txt and X-Robots-Tag
    respect_robots_txt: bool = True
    max_requests_per_second: float = 5.0
    host_rate_overrides: dict[str, float] = field(default_factory=dict)  # netloc -> requests/s
    robots_timeout: float = 10.0
    robots_retry_seconds: float = 60.0
    _robots: dict[str, tuple[Protego | None, float]] = field(default_factory=dict, repr=False)
    _next_slot: dict[str, float] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _host_locks: dict[str, threading.Lock] = field(default_factory=dict, repr=False)

    def _host_lock(self, origin: str) -> threading.Lock:
        with self._lock:
            return self._host_locks.setdefault(origin, threading.Lock())

    def robots_verdict(self, url: str) -> str | None:
        """None when we may fetch ``url``; otherwise the error to record for the row."""
        parts = urlsplit(url)
        if not self.respect_robots_txt or parts.scheme not in ("http", "https"):
            return None
        origin = f"{parts.scheme}://{parts.netloc}"
        with self._host_lock(origin):
            parser, fetched_at = self._robots.get(origin, (None, -1.0))
            stale = parser is None and time.monotonic() - fetched_at > self.robots_retry_seconds
            if origin not in self._robots or stale:
                parser = self._fetch_robots(origin)
                self._robots[origin] = (parser, time.monotonic())
        if parser is None:
            return f"{ROBOTS_UNREACHABLE_PREFIX} for {origin} (RFC 9309: treated as disallowed; retried later)"
        if not parser.can_fetch(url, self.user_agent_token):
            return f"{ROBOTS_ERROR_PREFIX} {url} for user-agent {self.user_agent_token!r}"
        return None

    def _fetch_robots(self, origin: str) -> Protego | None:
        request = urllib.request.Request(origin + "/robots.txt", headers={"User-Agent": self.user_agent})
        try:
            with urllib.request.urlopen(request, timeout=self.robots_timeout) as response:
                return Protego.parse(response.read().decode("utf-8", errors="replace"))
        except urllib.error.HTTPError as err:
            return Protego.parse("") if 400 <= err.code < 500 else None
        except (urllib.error.URLError, OSError, ValueError):
            return None

    def wait_turn(self, url: str) -> None:
        """Block until this host may be sent another request (a per-host spacing limiter)."""
        host = urlsplit(url).netloc
        rate = self.host_rate_overrides.get(host, self.max_requests_per_second)
        if rate <= 0:
            return
        interval = 1.0 / rate
        with self._lock:
            now = time.monotonic()
            slot = max(now, self._next_slot.get(host, now))
            self._next_slot[host] = slot + interval
        if slot > now:
            time.sleep(slot - now)


_policy: HostPolicy | None = None


def polite_fetch(row, timeout, user_agent_token, disallowed_header_directives):
    """Drop-in for img2dataset's ``download_image``: same arguments and ``(key, stream, error)`` result."""
    if _policy is None:
        return _original_download_image(row, timeout, user_agent_token, disallowed_header_directives)
    key, url = row
    verdict = _policy.robots_verdict(url)
    if verdict:
        return key, None, verdict
    _policy.wait_turn(url)
    try:
        request = urllib.request.Request(url, headers={"User-Agent": _policy.user_agent})
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if disallowed_header_directives and i2d_downloader.is_disallowed(
                response.headers, user_agent_token, disallowed_header_directives
            ):
                return key, None, OPT_OUT_ERROR
            return key, io.BytesIO(response.read()), None
    except Exception as err:  # noqa: BLE001 - img2dataset's contract: the error text becomes the row's error
        return key, None, str(err)


_install_lock = threading.Lock()
_install_count = 0


@contextmanager
def installed(policy: HostPolicy) -> Iterator[HostPolicy]:
    """Route img2dataset's fetches in this process through ``policy`` while the block runs."""
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
