"""Which addresses a crawl may connect to: globally routable ones, plus the hosts a recipe allowlists.

A crawled URL is third-party input. Without a check, ``http://169.254.169.254/`` (cloud metadata), a redirect
to ``127.0.0.1:6379`` or a DNS name that resolves to ``10.0.0.5`` makes the crawler a proxy into the network
it runs in, and the error texts in the manifest a port-scan oracle. :meth:`AddressGuard.resolve` is called by
the connection itself (:mod:`pipeline.net.client`) for every new connection: the name is resolved once, every
address checked, and the socket is opened to exactly the addresses checked, so a DNS answer that changes
between a check and the connect (rebinding) cannot slip through.

Allowlist entries (``download.allow_local_hosts``) are a host name, an IP address or a CIDR network, each
optionally with ``:port`` (IPv6 in brackets: ``[::1]:8080``): the demo's loopback sample server, a mirror on
the LAN. An allowlisted *name* may resolve to anything; an allowlisted *network* admits its addresses.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
BLOCKED_ADDRESS_PREFIX = "blocked address"
NAT64 = ipaddress.ip_network("64:ff9b::/96")  # RFC 6052: the last 32 bits are an IPv4 address

# The resolver every guarded connection uses; tests replace it to map names to private addresses.
getaddrinfo = socket.getaddrinfo


class BlockedAddress(Exception):
    """A host that resolves to an address the crawl must not reach. Not an ``OSError``: never retried."""


def embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 form carries (mapped, 6to4, Teredo client, NAT64, IPv4-compatible), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip.teredo is not None:
        return ip.teredo[1]
    if ip in NAT64 or (int(ip) >> 32 == 0 and int(ip) > 1):  # ::a.b.c.d (deprecated IPv4-compatible)
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def why_not_public(ip: IPAddress) -> str | None:
    """None for a globally routable unicast address; otherwise the kind of address it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        inner = embedded_ipv4(ip)
        if inner is not None:
            reason = why_not_public(inner)
            return f"{reason}, embedded in {ip}" if reason else None
    for kind in ("loopback", "link_local", "multicast", "unspecified", "reserved", "private"):
        if getattr(ip, f"is_{kind}"):
            return kind.replace("_", "-")
    if not ip.is_global:  # e.g. 100.64.0.0/10 (carrier-grade NAT), 192.0.0.0/24
        return "not globally routable"
    return None


@dataclass(frozen=True)
class AllowEntry:
    """One allowlist entry: a host name or a network, and an optional port."""

    host: str | None
    network: IPNetwork | None
    port: int | None

    @classmethod
    def parse(cls, text: str) -> AllowEntry:
        entry, port = text.strip().lower(), None
        if entry.startswith("["):  # [v6addr] or [v6addr]:port
            inside, _, rest = entry[1:].partition("]")
            entry, port = inside, (int(rest[1:]) if rest.startswith(":") else None)
        elif entry.count(":") == 1:  # name:port or v4:port (a bare IPv6 address has several colons)
            entry, _, port_text = entry.partition(":")
            port = int(port_text)
        try:
            return cls(None, ipaddress.ip_network(entry, strict=False), port)
        except ValueError:
            if not entry or "/" in entry:
                raise ValueError(f"not a host name, address or network: {text!r}") from None
            return cls(entry.rstrip("."), None, port)

    def admits_port(self, port: int) -> bool:
        return self.port is None or self.port == port


@dataclass(frozen=True)
class AddressGuard:
    """Checks a host, its port and the addresses it resolves to against the public-only rule and the allowlist."""

    allowlist: tuple[AllowEntry, ...] = ()
    # (host, port) -> getaddrinfo's answer; None: this module's getaddrinfo, uncached (see pipeline.net.dns)
    lookup: Callable[[str, int], list] | None = None

    @classmethod
    def allowing(cls, entries: Iterable[str], lookup: Callable[[str, int], list] | None = None) -> AddressGuard:
        return cls(tuple(AllowEntry.parse(e) for e in entries), lookup)

    def name_allowed(self, host: str, port: int) -> bool:
        name = host.lower().rstrip(".")
        return any(e.host == name and e.admits_port(port) for e in self.allowlist)

    def address_allowed(self, ip: IPAddress, port: int) -> bool:
        return any(e.network is not None and ip in e.network and e.admits_port(port) for e in self.allowlist)

    def check(self, host: str, port: int, addresses: Iterable[IPAddress]) -> None:
        """Raise :class:`BlockedAddress` unless every address may be reached (all of them: a name that resolves
        to one public and one private address is refused, not half-trusted)."""
        if self.name_allowed(host, port):
            return
        for ip in addresses:
            reason = why_not_public(ip)
            if reason and not self.address_allowed(ip, port):
                raise BlockedAddress(
                    f"{BLOCKED_ADDRESS_PREFIX}: {host} resolves to {ip} ({reason}); the crawl only connects to "
                    "public addresses (list the host in download.allow_local_hosts if it is meant to be local)"
                )

    def resolve(self, host: str, port: int, timeout: float | None = None) -> list[tuple[int, tuple]]:
        """``(family, sockaddr)`` pairs for ``host:port``, every one checked; raises :class:`BlockedAddress`."""
        del timeout  # getaddrinfo has none; kept so the signature says where one would go
        infos = self.lookup(host, port) if self.lookup else getaddrinfo(host, port, 0, socket.SOCK_STREAM)
        targets = [(family, sockaddr) for family, _, _, _, sockaddr in infos]
        self.check(host, port, [ipaddress.ip_address(sockaddr[0].split("%")[0]) for _, sockaddr in targets])
        return targets
