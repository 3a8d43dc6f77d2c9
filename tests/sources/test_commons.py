"""The Wikimedia Commons adapter against a loopback MediaWiki API replaying answers in the real JSON shape.

Answers are formatversion=2 (``pages`` a list, ``batchcomplete: true``), extmetadata as the CommonsMetadata
extension writes it (``{"value", "source", "hidden"}``). The root category's files come in two generator batches
(``gcmcontinue``), the second one over two answers (``iicontinue``: imageinfo for one page arrives later), and one
subcategory holds a file of its own plus one the root lists too. The suite's autouse ``connections_stay_on_loopback``
fixture (tests/conftest.py) refuses, and fails the test on, any connect beyond loopback; every config here
allowlists only 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import time
from urllib.parse import parse_qsl, urlsplit

import pyarrow as pa
import pytest

from pipeline.core.schema import CANDIDATE_SCHEMA, sample_id_for
from pipeline.net import addresses
from pipeline.net.addresses import AddressGuard
from pipeline.sources import commons
from pipeline.sources.base import ConfigError, SourceError
from tests.http_host import LoopbackHost, QuietHandler

ROOT = "Category:Iris tectorum"
SUB = "Category:Flowers of Iris tectorum"
UPLOAD = "https://upload.wikimedia.org/wikipedia/commons"
WIKI = "https://commons.wikimedia.org/wiki"


def meta(**values) -> dict:
    """extmetadata as the API writes it: each key an object with value, source (and hidden for some)."""
    out = {}
    for key, value in values.items():
        source = "mediawiki-metadata" if key == "ObjectName" else "commons-desc-page"
        out[key] = {"value": value, "source": source, **({"hidden": True} if key.startswith("License") else {})}
    return out


def file_page(pageid: int, name: str, mime: str, size: int = 48213, width: int = 640, **extmetadata) -> dict:
    path = f"{pageid % 16:x}/{pageid % 256:02x}/{name.replace(' ', '_')}"
    info = {
        "size": size,
        "width": width,
        "height": 480,
        "thumburl": f"{UPLOAD}/thumb/{path}/320px-{name.replace(' ', '_')}" + (".png" if name.endswith(".svg") else ""),
        "thumbwidth": 320,
        "thumbheight": 240,
        "url": f"{UPLOAD}/{path}",
        "descriptionurl": f"{WIKI}/File:{name.replace(' ', '_')}",
        "descriptionshorturl": f"https://commons.wikimedia.org/w/index.php?curid={pageid}",
        "extmetadata": meta(**extmetadata),
        "mime": mime,
    }
    return {"pageid": pageid, "ns": 6, "title": f"File:{name}", "imagerepository": "local", "imageinfo": [info]}


def bare(page: dict) -> dict:
    """The page as an answer lists it before its imageinfo arrives (prop continuation)."""
    return {k: v for k, v in page.items() if k != "imageinfo"}


IRIS_01 = file_page(
    101,
    "Iris tectorum 01.jpg",
    "image/jpeg",
    ImageDescription='Roof iris (<i lang="la">Iris tectorum</i>) in flower,<br>\nKyoto &amp; Nara<script>x()</script>',
    ObjectName="Iris tectorum 01",
    Artist='<bdi><a href="//commons.wikimedia.org/wiki/User:Alice" title="User:Alice">Alice &amp; Bob</a></bdi>',
    LicenseShortName="CC BY-SA 4.0",
    LicenseUrl="https://creativecommons.org/licenses/by-sa/4.0",
    License="cc-by-sa-4.0",
)
VIDEO = file_page(
    102, "Iris tectorum in the wind.webm", "video/webm", LicenseShortName="CC BY 4.0", Artist="Carol", ObjectName="x"
)
AUDIO = file_page(103, "Iris tectorum pronunciation.mp3", "audio/mpeg", LicenseShortName="CC0", ObjectName="y")
GFDL = file_page(104, "Iris tectorum 02.png", "image/png", LicenseShortName="GFDL", ObjectName="Iris tectorum 02")
LATE = file_page(  # its imageinfo comes in the second answer of the batch
    105, "Iris tectorum 03.jpg", "image/jpeg", LicenseUrl="http://creativecommons.org/publicdomain/zero/1.0/deed.en",
    ObjectName="Iris tectorum 03", Artist="Dan",
)  # fmt: skip
MISSING = {"pageid": 106, "ns": 6, "title": "File:Iris tectorum lost.jpg", "imagerepository": ""}
WHITE = file_page(
    201, "Iris tectorum white.jpg", "image/jpeg", LicenseShortName="Public domain", ObjectName="Iris tectorum white"
)
DRAWING = file_page(301, "Iris tectorum diagram.svg", "image/svg+xml", LicenseShortName="CC0", ObjectName="Diagram")
PHOTO = file_page(302, "Iris tectorum 04.jpg", "image/jpeg", LicenseShortName="CC BY 4.0", ObjectName="Photo 04")

GCM_NEXT = "file|49524953205445435445524f5554202d20303320504e47|103"
II_NEXT = "Iris_tectorum_03.jpg|20190514081522"
# (kind, category title, continuation value or "") -> recorded answer
ANSWERS: dict[tuple[str, str, str], dict] = {
    ("files", ROOT, ""): {
        "batchcomplete": True,
        "continue": {"gcmcontinue": GCM_NEXT, "continue": "gcmcontinue||"},
        "query": {"pages": [IRIS_01, VIDEO]},
    },
    ("files", ROOT, GCM_NEXT): {
        "continue": {"iicontinue": II_NEXT, "gcmcontinue": GCM_NEXT, "continue": "gcmcontinue||"},
        "query": {"pages": [AUDIO, GFDL, bare(LATE), MISSING]},
    },
    ("files", ROOT, II_NEXT): {
        "batchcomplete": True,
        "query": {"pages": [bare(AUDIO), bare(GFDL), LATE, MISSING]},
    },
    ("subcats", ROOT, ""): {
        "batchcomplete": True,
        "query": {"categorymembers": [{"pageid": 90001, "ns": 14, "title": SUB}]},
    },
    ("files", SUB, ""): {"batchcomplete": True, "query": {"pages": [WHITE, IRIS_01]}},
    ("subcats", SUB, ""): {  # a cycle back to the root, as Commons has them
        "batchcomplete": True,
        "query": {"categorymembers": [{"pageid": 90000, "ns": 14, "title": ROOT}]},
    },
    ("files", "Category:Iris tectorum drawings", ""): {"batchcomplete": True, "query": {"pages": [DRAWING, PHOTO]}},
    ("files", "Category:Empty", ""): {"batchcomplete": True},
}


class CommonsAPI(LoopbackHost):
    """Replays ANSWERS by (generator or list, category, continuation); ``special`` overrides a whole answer."""

    def __init__(self, special=None) -> None:
        self.requests: list[tuple[float, dict[str, str], dict[str, str]]] = []
        self.special = special  # (params, attempt) -> (status, headers, body) or None
        host = self

        class Handler(QuietHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                params = dict(parse_qsl(urlsplit(self.path).query))
                host.requests.append((time.monotonic(), params, dict(self.headers)))
                status, headers, body = host.answer(params)
                self.reply(status, {"Content-Type": "application/json; charset=utf-8", **headers}, body)

        super().__init__(Handler)

    def answer(self, params: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        if self.special and (special := self.special(params, len(self.requests))):
            return special
        if params.get("generator") == "categorymembers":
            key = ("files", params["gcmtitle"], params.get("iicontinue") or params.get("gcmcontinue") or "")
        else:
            key = ("subcats", params.get("cmtitle", ""), params.get("cmcontinue") or "")
        if key not in ANSWERS:
            error = {"code": "badtest", "info": f"no recorded answer for {key}"}
            return 200, {}, json.dumps({"error": error, "servedby": "mw-api-test"}).encode()
        return 200, {}, json.dumps(ANSWERS[key]).encode()

    @property
    def api(self) -> str:
        return f"{self.url}/w/api.php"


def options(host: CommonsAPI, **extra) -> dict:
    return {
        "categories": [ROOT],
        "api_url": host.api,
        "allow_local_hosts": [f"127.0.0.1:{host.port}"],
        "min_request_interval": 0.0,
        **extra,
    }


def crawl(host: CommonsAPI, ctx, **extra) -> list[dict]:
    return list(commons.read(commons.Config.from_dict(options(host, **extra)), ctx))


def by_id(rows: list[dict]) -> dict[str, dict]:
    return {row["source_record_id"]: row for row in rows}


def test_two_batches_and_a_subcategory_at_depth_1(ctx):
    with CommonsAPI() as host:
        rows = crawl(host, ctx, depth=1)
    assert [r["source_record_id"] for r in rows] == ["101", "102", "103", "104", "105", "106", "201"]
    assert [r["input_row"] for r in rows] == list(range(1, 8))  # 101, listed again in the subcategory: one row
    pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA)  # every row fits the schema
    kinds = [(p.get("generator") or p.get("list"), p.get("gcmtitle") or p.get("cmtitle")) for _, p, _ in host.requests]
    assert kinds == [("categorymembers", ROOT)] * 3 + [("categorymembers", ROOT), ("categorymembers", SUB)]
    assert host.requests[3][1]["cmtype"] == "subcat" and host.requests[4][1]["gcmtype"] == "file"
    assert [p.get("gcmcontinue") for _, p, _ in host.requests[:3]] == [None, GCM_NEXT, GCM_NEXT]
    assert host.requests[2][1]["iicontinue"] == II_NEXT  # the whole continue object is sent back
    for _, params, headers in host.requests:
        assert (params["action"], params["format"], params["formatversion"], params["maxlag"]) == (
            "query", "json", "2", "5"
        )  # fmt: skip
        assert headers["User-Agent"] == commons.DEFAULT_USER_AGENT
    assert host.requests[0][1]["iiprop"] == "url|extmetadata|mime|size"
    assert "iiurlwidth" not in host.requests[0][1]


def test_every_field_of_a_file_is_mapped(ctx):
    with CommonsAPI() as host:
        rows = by_id(crawl(host, ctx, depth=1))
    iris = rows["101"]
    assert iris == {
        **iris,
        "sample_id": sample_id_for("commons", "101"),
        "source": "commons",
        "domain": "plant",
        "url": IRIS_01["imageinfo"][0]["url"],
        "page_url": f"{WIKI}/File:Iris_tectorum_01.jpg",
        "original_text": "Roof iris (Iris tectorum) in flower, Kyoto & Nara",  # tags and script gone
        "caption": "Roof iris (Iris tectorum) in flower, Kyoto & Nara",
        "caption_kind": "original",
        "scientific_name": None,
        "license": "cc-by-sa-4.0",
        "license_url": "https://creativecommons.org/licenses/by-sa/4.0/",
        "rights_holder": "Alice & Bob",
        "attribution": "(c) Alice & Bob, some rights reserved (CC BY-SA 4.0)",
        "status": "pending",
        "error": None,
        "input_file": f"{host.api} ({ROOT})",
        "input_row": 1,
    }
    late, white = rows["105"], rows["201"]
    assert (late["status"], late["license"], late["rights_holder"], late["original_text"]) == (
        "pending", "cc0-1.0", "Dan", "Iris tectorum 03"  # ObjectName when there is no ImageDescription
    )  # fmt: skip
    assert (white["status"], white["license"], white["input_file"]) == ("pending", "pdm-1.0", f"{host.api} ({SUB})")
    assert white["attribution"] == "unknown author, no rights reserved (Public Domain Mark 1.0)"


def test_unusable_files_are_rejected_with_the_reason(ctx):
    with CommonsAPI() as host:
        rows = by_id(crawl(host, ctx))
    where = f"{host.api} ({ROOT})"
    assert {k: r["status"] for k, r in rows.items()} == {
        "101": "pending", "102": "rejected", "103": "rejected", "104": "rejected", "105": "pending", "106": "rejected",
    }  # fmt: skip
    assert rows["102"]["error"] == f"{where} row 2, field mime: video file (video/webm), not an image"
    assert rows["103"]["error"] == f"{where} row 3, field mime: audio file (audio/mpeg), not an image"
    assert rows["104"]["error"] == f"{where} row 4, field license: unknown license code 'GFDL'"
    assert rows["104"]["license"] == "GFDL"  # the raw value kept for auditing
    assert rows["106"]["error"].startswith(f"{where} row 6, field imageinfo: no imageinfo for 'File:Iris tectorum lost")
    assert rows["106"]["sample_id"] == sample_id_for("commons", "106") and rows["106"]["url"] is None


def test_depth_0_reads_no_subcategory_and_depth_2_survives_a_cycle(ctx):
    with CommonsAPI() as host:
        assert "201" not in by_id(crawl(host, ctx, depth=0))
        assert not any(p.get("list") for _, p, _ in host.requests)
        host.requests.clear()
        rows = crawl(host, ctx, depth=2)
    assert [r["source_record_id"] for r in rows][-1] == "201" and len(rows) == 7
    listed = [p["cmtitle"] for _, p, _ in host.requests if p.get("list")]
    assert listed == [ROOT, SUB]  # the subcategory's link back to the root is not followed


def test_category_is_taxon_names_every_file_under_the_configured_category(ctx):
    with CommonsAPI() as host:
        rows = by_id(crawl(host, ctx, depth=1, category_is_taxon=True, categories=["Iris_tectorum"]))
    assert (rows["201"]["scientific_name"], rows["201"]["caption"], rows["201"]["caption_kind"]) == (
        "Iris tectorum", "Iris tectorum.", "dalip"
    )  # fmt: skip
    assert rows["201"]["caption_variants"]["original"] == "Iris tectorum white"


def test_thumbnails_and_svg(ctx):
    with CommonsAPI() as host:
        originals = by_id(crawl(host, ctx, categories=["Category:Iris tectorum drawings"]))
        thumbs = by_id(crawl(host, ctx, categories=["Category:Iris tectorum drawings"], thumb_width=320))
    assert originals["301"]["status"] == "rejected" and "cannot decode SVG" in originals["301"]["error"]
    assert originals["302"]["url"] == PHOTO["imageinfo"][0]["url"]
    assert thumbs["301"]["status"] == "pending" and thumbs["301"]["url"].endswith("320px-Iris_tectorum_diagram.svg.png")
    assert thumbs["302"]["url"] == PHOTO["imageinfo"][0]["thumburl"]
    assert host.requests[-1][1]["iiurlwidth"] == "320"


def test_requests_are_serial_and_spaced(ctx):
    with CommonsAPI() as host:
        crawl(host, ctx, depth=1, min_request_interval=0.1, user_agent="TestBot/1.0 (+mailto:test@example.org)")
    starts = [t for t, _, _ in host.requests]
    gaps = [b - a for a, b in zip(starts, starts[1:], strict=False)]
    assert len(starts) == 5 and min(gaps) >= 0.07 and starts[-1] - starts[0] >= 0.39  # arrival jitter allowed
    assert {h["User-Agent"] for _, _, h in host.requests} == {"TestBot/1.0 (+mailto:test@example.org)"}


def test_sample_ids_are_stable_across_runs(ctx):
    with CommonsAPI() as host:
        first = [r["sample_id"] for r in crawl(host, ctx, depth=1)]
        again = [r["sample_id"] for r in crawl(host, ctx, depth=1)]
    assert first == again and len(set(first)) == len(first)


def answer_json(body: dict, status: int = 200, **headers) -> tuple[int, dict, bytes]:
    return status, headers, json.dumps(body).encode()


def test_maxlag_is_honoured_by_waiting_for_retry_after(ctx):
    maxlag = {"error": {"code": "maxlag", "info": "Waiting for 10.64.48.35: 7 seconds lagged.", "lag": 7}}
    with CommonsAPI(lambda params, n: answer_json(maxlag, **{"Retry-After": "1"}) if n == 1 else None) as host:
        started = time.monotonic()
        rows = crawl(host, ctx)
    assert len(rows) == 6 and time.monotonic() - started >= 1.0
    assert host.requests[1][0] - host.requests[0][0] >= 0.95  # the retry came after Retry-After
    with CommonsAPI(lambda params, n: answer_json(maxlag, **{"Retry-After": "3600"})) as host:
        with pytest.raises(SourceError, match="asked us to wait 3600 s"):
            crawl(host, ctx)
        assert len(host.requests) == 1  # bounded: not slept through
    with CommonsAPI(lambda params, n: answer_json({}, 503, **{"Retry-After": "0"})) as host:
        with pytest.raises(SourceError, match="still asked us to wait after 2 retries"):
            crawl(host, ctx, max_retries=2)
        assert len(host.requests) == 3


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (answer_json({"error": {"code": "internal_api_error_DBQueryError", "info": "A database query error"},
                      "servedby": "mw-api-int.eqiad"}), "API error 'internal_api_error_DBQueryError'"),
        ((200, {}, b'{"batchcomplete": true, "query": {"pages": ['), "malformed JSON"),
        ((500, {}, b"<html>Internal error</html>"), "HTTP Error 500"),
        (answer_json({"query": {"pages": {"101": IRIS_01}}}), "expected query.pages as a list"),  # formatversion=1
        (answer_json({"continue": {"gcmcontinue": "x", "continue": "gcmcontinue||"}}), "repeated continue"),  # a loop
    ],
)  # fmt: skip
def test_api_failures_raise_naming_the_url_and_category(ctx, answer, message):
    with CommonsAPI(lambda params, n: answer) as host, pytest.raises(SourceError) as info:
        crawl(host, ctx)
    assert str(info.value).startswith(f"{host.api} ({ROOT}): ") and message in str(info.value)


def test_a_category_without_files_raises(ctx):
    with CommonsAPI() as host, pytest.raises(SourceError, match=r"\(Category:Empty\): no files listed at depth 0"):
        crawl(host, ctx, categories=["Empty"])


def test_loopback_is_refused_unless_allowlisted(ctx):
    with CommonsAPI() as host:
        secure = host.api.replace("http://", "https://")
        with pytest.raises(SourceError, match="blocked address: 127.0.0.1 resolves to 127.0.0.1"):
            crawl(host, ctx, api_url=secure, allow_local_hosts=[])
        assert not host.requests
    with pytest.raises(ConfigError, match="api_url must be https"):
        commons.Config(categories=[ROOT], api_url="http://commons.wikimedia.org/w/api.php")


@pytest.mark.parametrize("target", ["http://10.0.0.5/w/api.php", "http://169.254.169.254/latest/meta-data/"])
def test_a_redirect_to_a_private_address_is_refused(ctx, target):
    with CommonsAPI(lambda params, n: (302, {"Location": target}, b"")) as host:
        with pytest.raises(SourceError, match=f"blocked address: {urlsplit(target).hostname} resolves to"):
            crawl(host, ctx)
    assert len(host.requests) == 1  # the hop was never requested (the suite's fixture: never connected)


@pytest.fixture
def commons_test_resolves_to_10_255_255_1(monkeypatch):
    """A DNS answer that puts a name on a private address (no real lookup is made)."""

    def getaddrinfo(host, port, *args, **kwargs):
        if host != "commons.test":
            raise socket.gaierror(socket.EAI_NONAME, f"stub resolver: unknown name {host}")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("10.255.255.1", port))]

    monkeypatch.setattr(addresses, "getaddrinfo", getaddrinfo)


def test_a_name_on_a_private_address_is_refused_before_connecting(ctx, commons_test_resolves_to_10_255_255_1):
    config = commons.Config(
        categories=[ROOT], api_url="https://commons.test/w/api.php", allow_local_hosts=["127.0.0.1"]
    )
    with pytest.raises(SourceError, match="blocked address: commons.test resolves to 10.255.255.1"):
        list(commons.read(config, ctx))


def test_with_the_guard_broken_the_suites_net_still_fails_loudly(
    ctx, monkeypatch, commons_test_resolves_to_10_255_255_1, connections_stay_on_loopback
):
    """Were the adapter's guard to let a private address through, no packet would leave: the test fails loudly."""
    monkeypatch.setattr(AddressGuard, "check", lambda self, host, port, addresses: None)
    config = commons.Config(
        categories=[ROOT], api_url="https://commons.test/w/api.php", allow_local_hosts=["127.0.0.1"]
    )
    with pytest.raises(SourceError, match="test guard: connect to non-loopback"):
        list(commons.read(config, ctx))
    assert connections_stay_on_loopback == [("10.255.255.1", 443)]
    connections_stay_on_loopback.clear()  # recorded attempts would fail this test at teardown


def test_config_is_checked_at_the_edge():
    config = commons.Config.from_dict({"categories": ["iris_tectorum", "category:Flowers  of Iris"]})
    assert config.categories == ["Category:Iris tectorum", "Category:Flowers of Iris"]
    assert (config.user_agent, config.min_request_interval, config.maxlag) == (commons.DEFAULT_USER_AGENT, 1.0, 5)
    for bad, match in [
        ({"categories": "Category:Iris"}, "non-empty list"),
        ({"categories": ["Category:"]}, "non-empty strings"),
        ({"categories": [ROOT], "domain": "fungi"}, "domain"),
        ({"categories": [ROOT], "depth": -1}, "depth"),
        ({"categories": [ROOT], "batch_size": 501}, "batch_size"),
        ({"categories": [ROOT], "user_agent": " "}, "user_agent"),
        ({"categories": [ROOT], "min_request_interval": "1"}, "min_request_interval must be a number"),
        ({"categories": [ROOT], "thumb_width": 0}, "thumb_width must be an integer >= 1 or null"),
        ({"categories": [ROOT], "allow_local_hosts": ["10.0.0.0/33"]}, "allow_local_hosts"),
        ({"categories": [ROOT], "gcmlimit": 5}, "unknown option"),
    ]:
        with pytest.raises(ConfigError, match=match):
            commons.Config.from_dict(bad)


@pytest.mark.parametrize(
    ("html", "text"),
    [
        ("<b>English:</b> An <i>Iris</i>&nbsp;flower", "English: An Iris flower"),
        ("Unknown author<br/>(1890)", "Unknown author (1890)"),
        ("<style>.x{}</style><div>a</div><div>b</div>", "a b"),
        ("<img src=x onerror=alert(1)>&lt;script&gt;", "<script>"),  # text stays text; nothing is evaluated
        ("", None),
        (None, None),
        (1.2, None),
    ],
)
def test_html_is_reduced_to_text(html, text):
    assert commons.html_text(html) == text
