"""The fetch policy (pipeline/net) in this process: addresses, URLs, the guarded client and polite_fetch.

Hostile names are mapped to private, link-local and metadata addresses by a stubbed resolver; the suite's
autouse ``connections_stay_on_loopback`` fixture fails any test in which a connection beyond loopback is even
attempted, so "refused" here also means "no packet was sent".
"""

from __future__ import annotations

import email.utils
import ipaddress
import socket
import ssl
import subprocess
import time

import pytest
import urllib3

from pipeline.core.config import DownloadConfig, RecipeError
from pipeline.net import addresses
from pipeline.net.addresses import AddressGuard, BlockedAddress, why_not_public
from pipeline.net.client import FetchLimits, FetchRefused, GuardedClient, retry_after_seconds
from pipeline.net.dns import CachedResolver
from pipeline.net.urls import UnsafeURL, checked_uri, to_uri
from pipeline.stages.download import politeness
from pipeline.stages.download.job import host_policy
from pipeline.stages.download.results import classify
from tests.hostile_host import WIKI_PATH, HostileHost


@pytest.fixture
def resolver(monkeypatch):
    """Names -> addresses, as a hostile DNS would answer; unknown names fail to resolve; calls are recorded."""
    table: dict[str, list[str]] = {}
    calls: list[str] = []

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        calls.append(host)
        try:
            answers = table[host] if host in table else [str(ipaddress.ip_address(host))]
        except ValueError:
            raise socket.gaierror(socket.EAI_NONAME, f"stub resolver: unknown name {host}") from None
        answers = answers.pop(0) if answers and isinstance(answers[0], list) else answers
        out = []
        for a in answers:
            ip = ipaddress.ip_address(a)
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            out.append((family, socket.SOCK_STREAM, 6, "", (a, port) if ip.version == 4 else (a, port, 0, 0)))
        return out

    monkeypatch.setattr(addresses, "getaddrinfo", getaddrinfo)
    return table, calls


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1", "127.0.0.2", "10.0.0.5", "172.16.3.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
     "224.0.0.1", "240.0.0.1", "255.255.255.255", "::1", "::", "fe80::1", "fc00::1", "ff02::1", "::ffff:127.0.0.1",
     "::ffff:10.0.0.1", "::ffff:169.254.169.254", "64:ff9b::a00:1", "2002:a00:1::1", "::10.0.0.1"],
)  # fmt: skip
def test_non_public_addresses_and_their_ipv6_forms_are_refused(address):
    assert why_not_public(ipaddress.ip_address(address)) is not None


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_allowed(address):
    assert why_not_public(ipaddress.ip_address(address)) is None


def test_allowlist_entries_admit_only_what_they_name():
    guard = AddressGuard.allowing(["127.0.0.1:8080", "10.1.0.0/16", "mirror.lan", "[::1]:9000"])
    loopback, lan = ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("10.1.2.3")
    guard.check("127.0.0.1", 8080, [loopback])
    guard.check("anything", 443, [lan])
    guard.check("mirror.lan", 80, [ipaddress.ip_address("192.168.0.9")])
    guard.check("x", 9000, [ipaddress.ip_address("::1")])
    for host, port, ip in [("127.0.0.1", 8081, loopback), ("x", 80, ipaddress.ip_address("10.2.0.1")),
                           ("x", 9001, ipaddress.ip_address("::1"))]:  # fmt: skip
        with pytest.raises(BlockedAddress, match="allow_local_hosts"):
            guard.check(host, port, [ip])
    with pytest.raises(RecipeError, match="allow_local_hosts"):
        DownloadConfig(allow_local_hosts=["10.0.0.0/33"])


@pytest.mark.parametrize(
    ("iri", "uri"),
    [
        ("https://upload.wikimedia.org/a/Rosa canina ü.jpg", "https://upload.wikimedia.org/a/Rosa%20canina%20%C3%BC.jpg"),
        ("  http://example.org/a.jpg\n", "http://example.org/a.jpg"),
        ("http://bücher.example/ä?q=ö ü#f", "http://xn--bcher-kva.example/%C3%A4?q=%C3%B6%20%C3%BC#f"),
        ("http://example.org/already%20encoded/100%", "http://example.org/already%20encoded/100%25"),
        ("HTTP://Example.ORG:8080/A", "http://example.org:8080/A"),
        ("http://[::1]:8000/x y", "http://[::1]:8000/x%20y"),
    ],
)  # fmt: skip
def test_iris_are_percent_encoded_once(iri, uri):
    assert to_uri(iri) == uri
    assert to_uri(uri) == uri  # idempotent: a stored URI is left as it is


@pytest.mark.parametrize(
    "url", ["file:///etc/passwd", "data:image/png;base64,iVBORw0KGgo=", "ftp://example.org/a.jpg",
            "javascript:alert(1)", "gopher://x/", "http:///nohost.jpg", "http://[::1/a.jpg", "http://x:99999/a"],
)  # fmt: skip
def test_only_http_urls_with_a_host_are_fetchable(url):
    with pytest.raises(UnsafeURL, match="^blocked url"):
        checked_uri(url)


def client(allow=(), **limits) -> GuardedClient:
    return GuardedClient(AddressGuard.allowing(allow), FetchLimits(**{"timeout": 2, **limits}), {"User-Agent": "t"})


@pytest.mark.parametrize(
    ("name", "answers"),
    [("metadata.test", ["169.254.169.254"]), ("intranet.test", ["10.0.0.5"]), ("v6.test", ["fd00::7"]),
     ("mapped.test", ["::ffff:192.168.0.1"]), ("mixed.test", ["93.184.216.34", "10.0.0.5"])],
)  # fmt: skip
def test_a_name_resolving_to_a_non_public_address_is_refused_without_connecting(resolver, name, answers):
    table, _ = resolver
    table[name] = answers
    with pytest.raises(BlockedAddress, match=f"^blocked address: {name} resolves to"):
        client().get(f"http://{name}/latest/meta-data/")


def test_an_allowlisted_name_connects_to_the_address_it_was_checked_at(resolver):
    table, _ = resolver
    with HostileHost() as host:
        table["images.test"] = ["127.0.0.1"]
        fetched = client(allow=[f"images.test:{host.port}"]).get(f"http://images.test:{host.port}/img/1.jpg")
        assert fetched.status == 200 and fetched.body[:2] == b"\xff\xd8"
        with pytest.raises(BlockedAddress):  # the same address under a name nobody allowlisted
            client().get(f"http://127.0.0.1:{host.port}/img/1.jpg")
    assert host.hits["/img/1.jpg"] == 1


def test_dns_rebinding_is_checked_on_every_new_connection(resolver):
    """The first answer is allowlisted loopback, the next a private address: the second connection is refused."""
    table, calls = resolver
    with HostileHost() as host:
        table["rebind.test"] = [["127.0.0.1"], ["10.0.0.9"]]  # successive answers
        guarded = client(allow=["127.0.0.1/32"])
        assert guarded.get(f"http://rebind.test:{host.port}/img/1.jpg").status == 200
        guarded.clear()  # drop the kept-alive connection: the next request must connect (and resolve) again
        with pytest.raises(BlockedAddress, match="10.0.0.9"):
            guarded.get(f"http://rebind.test:{host.port}/img/2.jpg")
    assert calls.count("rebind.test") == 2 and host.hits["/img/2.jpg"] == 0


def test_bodies_are_capped_announced_or_not_and_so_is_time():
    with HostileHost(big_bytes=300_000, drip_seconds=0.2) as host:
        capped = client(allow=["127.0.0.1"], max_bytes=100_000, max_seconds=1.0)
        for path in ("/big", "/big-unannounced"):
            with pytest.raises(FetchRefused, match="^too large"):
                capped.get(host.url + path)
        with pytest.raises(FetchRefused, match="^too slow"):
            capped.get(host.url + "/drip")
        assert len(capped.get(host.url + "/big", truncate=True).body) == 100_000  # robots.txt is read this way


def policy_for(host: HostileHost, **download) -> politeness.HostPolicy:
    options = {"timeout": 2, "max_requests_per_host_per_second": 0, "allow_local_hosts": [f"127.0.0.1:{host.port}"]}
    return host_policy(DownloadConfig(**{**options, **download}))


def fetch(policy: politeness.HostPolicy, url: str) -> tuple[bytes | None, str | None, str]:
    """polite_fetch as img2dataset calls it; the body, the error and the status the manifest would get."""
    with politeness.installed(policy):
        _, stream, error = politeness.polite_fetch((0, url), 2, "plantmix", ["noai"])
    status, _ = classify("success" if stream else "failed_to_download", error)
    return (stream.read() if stream else None), error, status


def test_redirects_are_rechecked_hop_by_hop(resolver):
    table, _ = resolver
    table["metadata.test"] = ["169.254.169.254"]
    with HostileHost() as entry, HostileHost(robots="User-agent: *\nDisallow: /img/\n") as internal:
        policy = policy_for(entry)
        cases = {
            f"http://127.0.0.1:{internal.port}/img/1.jpg": "blocked",  # loopback, but not the allowlisted port
            "http://169.254.169.254/latest/meta-data/": "blocked",
            "http://metadata.test/latest/meta-data/": "blocked",
            "file:///etc/passwd": "blocked",
            "ftp://example.org/a.jpg": "blocked",
            "data:image/jpeg;base64,/9j/4AAQ": "blocked",
            "/img/5.jpg": "ok",  # a relative redirect on the allowlisted host
        }
        for target, expected in cases.items():
            body, error, status = fetch(policy, f"{entry.url}/redirect?to={target}")
            assert status == expected, (target, error)
        _, error, status = fetch(policy, f"{entry.url}/redirect-loop/0")
        assert status == "failed_download" and error.startswith("too many redirects")
        # A hop to a host whose robots.txt disallows us: robots.txt is read there, the image is not.
        both = policy_for(entry, allow_local_hosts=[f"127.0.0.1:{entry.port}", f"127.0.0.1:{internal.port}"])
        _, error, status = fetch(both, f"{entry.url}/redirect?to={internal.url}/img/2.jpg")
        assert status == "robots_disallowed", error
    assert sum(internal.hits.values()) == 1 and internal.hits["/robots.txt"] == 1
    assert entry.hits["/redirect-loop/5"] == 1 and entry.hits["/redirect-loop/6"] == 0  # 5 hops, then refused


def test_oversized_bodies_and_images_are_refused_before_decoding():
    with HostileHost(big_bytes=2_000_000) as host:
        policy = policy_for(host, max_response_bytes=1_000_000, max_image_area=50_000_000)
        assert fetch(policy, host.url + "/big")[2] == "too_large"
        body, error, status = fetch(policy, host.url + "/bomb.png")
        assert status == "too_large" and "12000x12000" in error and body is None
        body, error, status = fetch(policy, host.url + WIKI_PATH)  # a space and a non-ASCII letter
        assert status == "ok" and body[:2] == b"\xff\xd8", error
    assert host.hits[WIKI_PATH] == 1


def test_robots_txt_of_a_blocked_host_is_never_requested(resolver):
    table, _ = resolver
    table["intranet.test"] = ["10.0.0.5"]
    with HostileHost() as host:
        _, error, status = fetch(policy_for(host), "http://intranet.test/img/1.jpg")
    assert status == "blocked" and "10.0.0.5" in error


def test_without_an_installed_policy_nothing_is_fetched():
    with HostileHost() as host:
        _, stream, error = politeness.polite_fetch((0, host.url + "/img/1.jpg"), 2, "plantmix", [])
    assert stream is None and error == politeness.NO_POLICY_ERROR and not host.hits


def test_the_suites_loopback_guard_refuses_and_records_other_connections(connections_stay_on_loopback):
    with socket.socket() as sock, pytest.raises(ConnectionRefusedError, match="test guard"):
        sock.connect(("10.255.255.1", 80))  # refused before any packet leaves
    assert connections_stay_on_loopback == [("10.255.255.1", 80)]
    connections_stay_on_loopback.clear()  # recorded attempts would fail this test at teardown


def test_the_dns_cache_saves_lookups_not_checks(resolver):
    """Answers are reused within the TTL, failures for a shorter one; a cached private answer is still refused."""
    table, calls = resolver
    table["intranet.test"] = ["10.0.0.5"]
    cached = GuardedClient(AddressGuard.allowing([], CachedResolver(ttl=60, negative_ttl=60)), FetchLimits(), {})
    for _ in range(3):
        with pytest.raises(BlockedAddress, match="10.0.0.5"):
            cached.get("http://intranet.test/a.jpg")
        with pytest.raises(Exception, match="unknown name"):
            cached.get("http://nowhere.test/a.jpg")
    assert calls.count("intranet.test") == 1 and calls.count("nowhere.test") == 1
    expiring = CachedResolver(ttl=0.05)
    expiring("intranet.test", 80)
    time.sleep(0.1)
    expiring("intranet.test", 80)
    assert calls.count("intranet.test") == 3


@pytest.fixture
def https_host(tmp_path):
    """A loopback HTTPS image host with a self-signed certificate for 127.0.0.1; yields (url, cert file)."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    with HostileHost() as host:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        host.server.socket = context.wrap_socket(host.server.socket, server_side=True)
        yield f"https://127.0.0.1:{host.port}", str(cert)


def test_https_is_verified_against_the_recipes_ca_file_and_never_unverified(https_host):
    url, cert = https_host
    guard = AddressGuard.allowing(["127.0.0.1"])
    trusted = GuardedClient(guard, FetchLimits(timeout=5), {}, ca_file=cert)
    assert trusted.get(url + "/img/1.jpg").body[:2] == b"\xff\xd8"
    with pytest.raises(urllib3.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        GuardedClient(guard, FetchLimits(timeout=5), {}).get(url + "/img/1.jpg")  # the system CAs do not know it


@pytest.mark.parametrize("value, seconds", [("3", 3.0), (" 120 ", 120.0), ("soon", None), ("", None), (None, None)])
def test_retry_after_values_are_read_as_delays(value, seconds):
    assert retry_after_seconds(value) == seconds


def test_retry_after_dates_are_read_against_now():
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 90, usegmt=True)
    assert retry_after_seconds(date, now=now) == pytest.approx(90)
    assert retry_after_seconds(email.utils.formatdate(now - 90, usegmt=True), now=now) == 0.0


def test_a_hosts_retry_after_holds_its_next_request_and_the_retry_succeeds():
    """img2dataset retries a failed row (``retries``): the retry waits for the Retry-After, then gets the image."""
    with HostileHost() as host:
        policy = policy_for(host, max_requests_per_host_per_second=0)  # no rate limit: only Retry-After spaces
        times = []
        with politeness.installed(policy):
            for _ in range(2):  # the first try and img2dataset's retry
                _, stream, error = politeness.polite_fetch((0, host.url + "/busy/1.jpg?after=1"), 2, "plantmix", [])
                times.append(time.monotonic())
        assert error is None and stream is not None
        assert times[1] - times[0] >= 0.9  # the retry was not sent before the second the host asked for
        assert fetch(policy, host.url + "/busy/1.jpg?after=1")[2] == "ok"
    assert host.hits["/busy/1.jpg"] == 3


def test_a_long_retry_after_fails_the_hosts_rows_without_requests():
    with HostileHost() as host:
        policy = policy_for(host, max_retry_after_seconds=5)
        _, error, status = fetch(policy, host.url + "/busy/2.jpg?after=3600")
        assert status == "failed_download" and error.startswith("HTTP Error 429")
        start = time.monotonic()
        for n in range(3):
            _, error, status = fetch(policy, f"{host.url}/img/{n}.jpg")
            assert status == "failed_download" and error.startswith(politeness.BACKING_OFF_PREFIX), error
        assert time.monotonic() - start < 1  # not slept through
    assert host.hits["/busy/2.jpg"] == 1 and not any(path.startswith("/img/") for path in host.hits)
