"""Polite, guarded fetching for img2dataset: our User-Agent, robots.txt (RFC 9309), a per-host rate limit, and
the crawl's fetch policy (:mod:`pipeline.net`) on every request.

img2dataset does the downloading, resizing and writing; its fetch function ``download_image`` sends a
browser-like User-Agent through urllib (any scheme, any address, up to 10 redirects anywhere, no size cap),
checks ``X-Robots-Tag`` opt-outs and nothing else. :func:`polite_fetch` takes its place (img2dataset looks it
up by name on every call; :func:`installed` swaps it in for one download):

- every request, robots.txt and each redirect hop included, through one :class:`GuardedClient`: http(s) only,
  public addresses only (plus the recipe's allowlist) checked at connect time, bytes and time capped;
- each redirect hop re-checked: its URL, its host's robots.txt, its host's rate limit;
- an image whose header declares more than ``max_image_area`` pixels refused before anything decodes it;
- the recipe's descriptive User-Agent on every request, robots.txt included;
- robots.txt per host, parsed by Protego (Scrapy's RFC 9309 parser: longest match, ``*`` and ``$``) and
  matched against our token. A 4xx answer allows everything; a 5xx answer or an unreachable host is
  "unreachable" (RFC 9309: assume disallowed) for ``robots_retry_seconds``, after which it is asked again;
  its rows end ``failed_download`` with the reason, not ``robots_disallowed``;
- a per-host spacing limit, per download process (with P shards fetching at once a host sees at most P times
  the rate);
- ``Retry-After`` on a 429 or 503 answer: nothing more is sent to that host until the time it names (the
  row's retry, img2dataset's ``retries``, waits for it); a wait longer than ``max_retry_after_seconds`` is not
  slept through: that host's rows fail at once (``host asked to wait``) without a request until the time passes;
- opt-out headers exactly as img2dataset decides them (its ``is_disallowed``).
"""

from __future__ import annotations

import io
import math
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

import img2dataset.downloader as i2d_downloader
import urllib3
from PIL import Image
from protego import Protego

from pipeline.net.addresses import BlockedAddress
from pipeline.net.client import TOO_LARGE_PREFIX, GuardedClient, HTTPStatusError, retry_after_seconds
from pipeline.net.urls import BLOCKED_URL_PREFIX, UnsafeURL, checked_uri
from pipeline.stages.download.local_bytes import LocalBytes
from pipeline.stages.download.quarantine import RowBytes
from pipeline.stages.download.results import ROBOTS_ERROR_PREFIX, ROBOTS_UNREACHABLE_PREFIX

OPT_OUT_ERROR = "Use of image disallowed by X-Robots-Tag directive"  # img2dataset's own wording
NO_POLICY_ERROR = "no fetch policy installed in this process; refusing to fetch"
ROBOTS_MAX_BYTES = 500 * 1024  # RFC 9309 §2.5: parse at least the first 500 KiB
RETRY_AFTER_STATUSES = (429, 503)  # RFC 9110 §10.2.3 / RFC 6585: the answers whose Retry-After we obey
BACKING_OFF_PREFIX = "host asked to wait"
_original_download_image = i2d_downloader.download_image
# PIL warns on large headers; image_area_verdict applies the recipe's own limit instead.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


class RobotsRefused(Exception):
    """A redirect hop whose host's robots.txt disallows us (the text is the row's error)."""


class HostBackingOff(Exception):
    """The host's Retry-After is further away than the policy sleeps for; the text is the row's error."""


class _HeaderLookup:
    """urllib3 headers as img2dataset's ``is_disallowed`` reads them (``get_all``, as on urllib's messages)."""

    def __init__(self, headers: urllib3.HTTPHeaderDict) -> None:
        self.headers = headers

    def get_all(self, name: str, default: list[str]) -> list[str]:
        return self.headers.getlist(name) or default


@dataclass
class HostPolicy:
    """What every fetch in this process must respect."""

    user_agent: str  # the full User-Agent header
    user_agent_token: str  # the product token matched in robots.txt and X-Robots-Tag
    client: GuardedClient  # every request goes through it (its guard, limits and User-Agent header)
    respect_robots_txt: bool = True
    max_image_area: float = math.inf  # pixels, read from the image header before decoding
    max_requests_per_second: float = 5.0
    host_rate_overrides: dict[str, float] = field(default_factory=dict)  # netloc -> requests/s
    robots_retry_seconds: float = 60.0
    max_retry_after_seconds: float = 120.0  # a longer Retry-After fails the host's rows instead of sleeping
    quarantined: dict[int, str] = field(default_factory=dict)  # row key -> reason (see .quarantine): not fetched
    # Folders of the recipe's local and pre-downloaded sources: the only places a file:// URL may be read from.
    local_roots: tuple[Path, ...] = ()
    _local_bytes: LocalBytes = field(default_factory=LocalBytes, repr=False)
    _robots: dict[str, tuple[Protego | None, float]] = field(default_factory=dict, repr=False)
    _next_slot: dict[str, float] = field(default_factory=dict, repr=False)
    _resume_at: dict[str, float] = field(default_factory=dict, repr=False)  # netloc -> monotonic time (Retry-After)
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
        """The parsed robots.txt; an empty one for a 4xx answer; None when unreachable (5xx, refused, network).

        A host (or robots.txt redirect) the fetch policy blocks raises :class:`BlockedAddress`, not cached: the row
        then says "blocked", as it would have without robots.txt, and nothing was sent to that address.
        """
        try:
            fetched = self.client.get(origin + "/robots.txt", truncate=True)  # redirects guarded, not robots-checked
        except BlockedAddress:
            raise
        except Exception:  # noqa: BLE001 - any failure to read robots.txt is "unreachable" (RFC 9309 §2.3.1.4)
            return None
        if 400 <= fetched.status < 500:
            return Protego.parse("")
        if not 200 <= fetched.status < 300:
            return None
        return Protego.parse(fetched.body[:ROBOTS_MAX_BYTES].decode("utf-8", errors="replace"))

    def before_redirect(self, url: str) -> None:
        """Each redirect hop: its host's robots.txt, then its host's rate limit (the URL is already checked)."""
        verdict = self.robots_verdict(url)
        if verdict:
            raise RobotsRefused(verdict)
        self.wait_turn(url)

    def read_local(self, url: str) -> bytes:
        """A local or pre-downloaded source's own file (``file://``), capped like a response; anything else is
        blocked. The fragment may name a tar member's byte range or a Parquet cell (:mod:`.local_bytes`)."""
        parts = urlsplit(url)
        path = Path(url2pathname(parts.path)).resolve()  # symlinks resolved: a link cannot lead outside a root
        if parts.netloc not in ("", "localhost") or not any(path.is_relative_to(root) for root in self.local_roots):
            raise UnsafeURL(f"{BLOCKED_URL_PREFIX}: {url[:200]} is not a file of a local source of this recipe")
        return self._local_bytes.read(path, parts.fragment, url, self.client.limits.max_bytes)

    def image_area_verdict(self, body: bytes) -> str | None:
        """Refuse an image whose header declares too many pixels, before img2dataset decodes it whole."""
        if math.isinf(self.max_image_area):
            return None
        try:
            with Image.open(io.BytesIO(body)) as image:  # reads the header only
                width, height = image.size
        except Image.DecompressionBombError as err:
            return f"{TOO_LARGE_PREFIX}: image area ({err})"
        except Exception:  # noqa: BLE001 - not a format PIL reads: img2dataset's decoder gives the verdict
            return None
        if width * height > self.max_image_area:
            return f"{TOO_LARGE_PREFIX}: image area {width}x{height} exceeds {self.max_image_area:.0f} pixels"
        return None

    def note_answer(self, url: str, status: int, headers: urllib3.HTTPHeaderDict) -> None:
        """Remember a host's ``Retry-After`` (on 429 and 503): :meth:`wait_turn` holds its requests until then."""
        if status not in RETRY_AFTER_STATUSES:
            return
        seconds = retry_after_seconds(headers.get("Retry-After"))
        if seconds is None:
            return
        host = urlsplit(url).netloc
        with self._lock:
            self._resume_at[host] = max(self._resume_at.get(host, 0.0), time.monotonic() + seconds)

    def wait_turn(self, url: str) -> None:
        """Block until this host may be sent another request: its Retry-After, then the per-host spacing limit.

        Raises :class:`HostBackingOff` instead of sleeping longer than ``max_retry_after_seconds``.
        """
        host = urlsplit(url).netloc
        rate = self.host_rate_overrides.get(host, self.max_requests_per_second)
        with self._lock:
            now = time.monotonic()
            resume = self._resume_at.get(host, now)
            if resume - now > self.max_retry_after_seconds:
                raise HostBackingOff(
                    f"{BACKING_OFF_PREFIX}: {host} answered Retry-After; {resume - now:.0f} s left "
                    f"(more than max_retry_after_seconds {self.max_retry_after_seconds:g}), not requested"
                )
            slot = max(now, resume)
            if rate > 0:
                slot = max(slot, self._next_slot.get(host, now))
                self._next_slot[host] = slot + 1.0 / rate
        if slot > now:
            time.sleep(slot - now)


_policy: HostPolicy | None = None


def polite_fetch(row, timeout, user_agent_token, disallowed_header_directives):
    """Drop-in for img2dataset's ``download_image``: same arguments and ``(key, stream, error)`` result.

    ``timeout`` is the client's (the recipe's ``download.timeout``, set when the policy was built).
    """
    del timeout
    key, url = row
    policy = _policy
    if policy is None:
        return key, None, NO_POLICY_ERROR
    if key in policy.quarantined:
        return key, None, policy.quarantined[key]
    try:
        if url.startswith("file:"):
            body = policy.read_local(url)
            verdict = policy.image_area_verdict(body)
            return (key, None, verdict) if verdict else (key, RowBytes(body, key), None)
        uri = checked_uri(url)
        verdict = policy.robots_verdict(uri)
        if verdict:
            return key, None, verdict
        policy.wait_turn(uri)
        fetched = policy.client.get(uri, on_redirect=policy.before_redirect)
        policy.note_answer(fetched.url, fetched.status, fetched.headers)
        if not 200 <= fetched.status < 300:
            raise HTTPStatusError(fetched.status, fetched.reason or _reason(fetched.status))
        if disallowed_header_directives and i2d_downloader.is_disallowed(
            _HeaderLookup(fetched.headers), user_agent_token, disallowed_header_directives
        ):
            return key, None, OPT_OUT_ERROR
        verdict = policy.image_area_verdict(fetched.body)
        if verdict:
            return key, None, verdict
        return key, RowBytes(fetched.body, key), None
    except Exception as err:  # noqa: BLE001 - img2dataset's contract: the error text becomes the row's error
        return key, None, str(err) or type(err).__name__


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


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
