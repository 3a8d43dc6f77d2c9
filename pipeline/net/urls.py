"""Crawled URLs to fetchable URIs: IRIs percent-encoded, only http(s), a host required.

Exports carry IRIs (Wikimedia Commons file names have spaces and non-ASCII letters, hosts can be IDNs) and
junk (``http://[::1/a.jpg``, ``file:///etc/passwd``, ``data:...``). :func:`to_uri` turns an IRI into the URI
a client sends (RFC 3987 §3.1: UTF-8 then percent-encoding; IDNA for the host) and leaves a URI unchanged,
so it is safe to apply twice; :func:`checked_uri` also refuses what must never be fetched. Both raise
:class:`UnsafeURL`, whose text starts with :data:`BLOCKED_URL_PREFIX` and becomes the row's error.
"""

from __future__ import annotations

import re
from urllib.parse import quote, urlsplit, urlunsplit

import idna

FETCHABLE_SCHEMES = ("http", "https")
BLOCKED_URL_PREFIX = "blocked url"
_LONE_PERCENT = re.compile(r"%(?![0-9A-Fa-f]{2})")
# RFC 3986 characters kept as they are: unreserved, sub-delims, ":" and "@" (pchar), "%" of existing escapes.
_PATH_SAFE = "/:@!$&'()*+,;=-._~%"
_QUERY_SAFE = _PATH_SAFE + "?"


class UnsafeURL(ValueError):
    """A URL that cannot or must not be fetched; the message names the URL and why."""


def _encode_part(text: str, safe: str) -> str:
    return quote(_LONE_PERCENT.sub("%25", text), safe=safe)


def _encode_host(host: str, url: str) -> str:
    if host.startswith("[") or host.isascii():
        return host.lower()
    try:
        return idna.encode(host, uts46=True).decode("ascii")
    except idna.IDNAError as err:
        raise UnsafeURL(
            f"{BLOCKED_URL_PREFIX}: host of {url!r} is not a valid internationalised name ({err})"
        ) from None


def to_uri(raw: str) -> str:
    """Percent-encode an IRI (path, query, fragment; IDNA host; surrounding whitespace stripped)."""
    url = raw.strip()
    try:
        parts = urlsplit(url)
        port = parts.port  # validates the port and the brackets of an IPv6 literal
        host = parts.hostname
    except ValueError as err:
        raise UnsafeURL(f"{BLOCKED_URL_PREFIX}: cannot parse {url!r} ({err})") from None
    netloc = parts.netloc
    if host:
        userinfo = parts.netloc.rpartition("@")[0]
        bracketed = f"[{host}]" if ":" in host else host
        netloc = _encode_host(bracketed, url) + (f":{port}" if port is not None else "")
        if userinfo:
            netloc = _encode_part(userinfo, "!$&'()*+,;=-._~%:") + "@" + netloc
    return urlunsplit(
        (
            parts.scheme.lower(),
            netloc,
            _encode_part(parts.path, _PATH_SAFE),
            _encode_part(parts.query, _QUERY_SAFE),
            _encode_part(parts.fragment, _QUERY_SAFE),
        )
    )


def check_fetchable(uri: str) -> None:
    """Raise :class:`UnsafeURL` unless ``uri`` is http(s) with a host."""
    parts = urlsplit(uri)
    if parts.scheme not in FETCHABLE_SCHEMES:
        shown = uri if len(uri) <= 80 else uri[:77] + "..."
        raise UnsafeURL(
            f"{BLOCKED_URL_PREFIX}: scheme {parts.scheme or '(none)'!r} of {shown!r}; only http(s) is fetched"
        )
    if not parts.hostname:
        raise UnsafeURL(f"{BLOCKED_URL_PREFIX}: no host in {uri!r}")


def checked_uri(raw: str) -> str:
    """:func:`to_uri`, then :func:`check_fetchable`: the URI the crawler may request."""
    uri = to_uri(raw)
    check_fetchable(uri)
    return uri
