"""Wikimedia Commons categories -> candidate rows, one per file, read through the MediaWiki Action API.

API (https://www.mediawiki.org/wiki/API:Categorymembers, https://www.mediawiki.org/wiki/API:Imageinfo,
https://www.mediawiki.org/wiki/API:Continue; the extmetadata keys come from the CommonsMetadata extension,
https://www.mediawiki.org/wiki/Extension:CommonsMetadata): for each configured category,
``action=query&generator=categorymembers&gcmtitle=Category:...&gcmtype=file&prop=imageinfo
&iiprop=url|extmetadata|mime|size&format=json&formatversion=2&maxlag=5``. The whole ``continue`` object of an
answer is sent back with the next request until an answer has none; pages are merged by page id until
``batchcomplete``, because Commons may hand out a batch's imageinfo over several answers (``iicontinue``, e.g.
beyond 50 thumbnails per request). With ``depth`` > 0 the subcategories are listed with
``list=categorymembers&cmtype=subcat`` and read the same way, to that depth; each category is read once (the
Commons category graph has cycles) and each file yields one row, the first time it is listed.

Users name categories as Commons spells them (https://commons.wikimedia.org/wiki/Category:Iris_tectorum ->
``Iris tectorum``); ``iiextmetadatafilter`` asks only for the keys read below, in ``language``. ``size`` (bytes,
width, height) is requested but not copied: the manifest gets those columns from the download step.

Columns: ``url`` = imageinfo ``url`` (the original file), or ``thumburl`` when ``thumb_width`` is set
(``iiurlwidth``: a JPEG/PNG rendering that wide; Commons serves a narrower bitmap's original instead);
``page_url`` = ``descriptionurl``; ``source_record_id`` = the page id (stable across file renames); ``original_text`` =
extmetadata ``ImageDescription``, else ``ObjectName``; ``rights_holder`` = ``Artist``. HTML in extmetadata is
reduced to its text with the standard library's ``html.parser`` (nothing is evaluated or fetched).
``input_file`` is ``"<api_url> (<category the file was listed in>)"``, ``input_row`` a running number.
``category_is_taxon: true`` takes the configured category's title (``Category:Iris tectorum`` -> ``Iris
tectorum``) as the scientific name of every file under it, subcategories included; rank and taxonomy stay
unknown. Off by default: most categories are not taxa.

License: the first non-empty of extmetadata ``LicenseShortName`` (``CC BY-SA 4.0``, ``CC0``, ``Public
domain``), ``LicenseUrl``, ``License`` is passed raw to :mod:`pipeline.sources.licenses`; a value it does not
know (ported ``CC BY-SA 3.0 de``, ``GFDL``) rejects the row with the reason, never a guessed license.
(``Public domain`` becomes ``pdm-1.0`` by that module's table.)

Media types: the download step decodes with OpenCV, so JPEG, PNG, GIF, WebP and TIFF are accepted. SVG is
accepted only with ``thumb_width`` (Commons' PNG rendering); an SVG original is rejected. Video, audio, PDF,
DjVu and every other type are rejected with their MIME type. A file without imageinfo is rejected too.

Network: every request goes through :class:`GuardedClient` (public addresses only unless ``allow_local_hosts``
lists them, TLS verified, byte and time caps), one at a time, at least ``min_request_interval`` seconds apart,
with the configured User-Agent (https://meta.wikimedia.org/wiki/User-Agent_policy). A ``maxlag`` error, 429 or
503 is retried after its ``Retry-After`` (default 5 s, https://www.mediawiki.org/wiki/Manual:Maxlag_parameter),
at most ``max_retries`` times and never for longer than ``max_retry_after_seconds``. An HTTP error, an API
``error`` object, malformed JSON or a refused connection raises :class:`SourceError` naming the URL and category;
so does a configured category with no file in its tree (a misspelt title lists nothing).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlencode, urlsplit

import urllib3

from pipeline.net.addresses import AddressGuard, BlockedAddress
from pipeline.net.client import FetchLimits, FetchRefused, GuardedClient, retry_after_seconds
from pipeline.net.urls import UnsafeURL
from pipeline.sources.base import (
    ConfigError,
    CrawlContext,
    SourceError,
    build_row,
    check_url_rewrite,
    config_from_dict,
    reject,
    rewrite_url,
)

log = logging.getLogger(__name__)

DEFAULT_USER_AGENT = "PlantMixBot/0.1 (+https://github.com/plantmix/plantmix)"
RASTER_MIME = ("image/jpeg", "image/png", "image/gif", "image/webp", "image/tiff")  # what the download step decodes
SVG_MIME = "image/svg+xml"
LICENSE_KEYS = ("LicenseShortName", "LicenseUrl", "License")  # the first non-empty one is the raw license
EXTMETADATA = ("ImageDescription", "ObjectName", "Artist", *LICENSE_KEYS)
RETRY_STATUSES = (429, 503)
DEFAULT_RETRY_SECONDS = 5.0  # the Maxlag manual's advice when an answer names no Retry-After


@dataclass
class Config:
    categories: list[str]  # Commons category titles, with or without the "Category:" prefix
    name: str = "commons"  # registry name written to the `source` column
    domain: str = "plant"  # "plant" or "general"
    depth: int = 0  # subcategory levels to read below each category (0: its own files only)
    category_is_taxon: bool = False  # the configured category's title is the scientific name of its files
    thumb_width: int | None = None  # pixels; None: the original file's URL
    language: str = "en"  # language of ImageDescription where a page has several (iiextmetadatalanguage)
    api_url: str = "https://commons.wikimedia.org/w/api.php"
    user_agent: str = DEFAULT_USER_AGENT  # Wikimedia asks for a contact URL or address in it
    min_request_interval: float = 1.0  # seconds between request starts (requests are serial)
    maxlag: int | None = 5  # seconds of database lag at which the API asks us to wait; None: not sent
    max_retries: int = 5  # retries of one request after maxlag / 429 / 503
    max_retry_after_seconds: float = 60.0  # a longer Retry-After raises instead of sleeping
    batch_size: int = 50  # files per request (gcmlimit, at most 500)
    timeout: float = 30.0  # seconds per connect and per read
    max_request_seconds: float = 120.0  # seconds per request, body included
    max_response_bytes: int = 20_000_000  # a larger answer is refused
    allow_local_hosts: list[str] = field(default_factory=list)  # hosts/networks allowed beyond public addresses
    url_rewrite: dict[str, str] | None = None  # URL prefix -> replacement, for mirrors / offline samples

    def __post_init__(self) -> None:
        where = f"source {self.name!r} (commons)"
        if isinstance(self.categories, str) or not self.categories:
            raise ConfigError(f"{where}: categories must be a non-empty list of category titles")
        if not all(isinstance(c, str) for c in self.categories) or "Category:" in (
            titles := [category_title(c) for c in self.categories]
        ):
            raise ConfigError(f"{where}: categories must be non-empty strings, got {self.categories!r}")
        self.categories = titles
        if self.domain not in ("plant", "general"):
            raise ConfigError(f"{where}: domain {self.domain!r} unknown; expected plant or general")
        numbers = {  # option -> (integers only, lowest value, may be null)
            "depth": (True, 0, False), "max_retries": (True, 0, False), "batch_size": (True, 1, False),
            "thumb_width": (True, 1, True), "maxlag": (True, 0, True), "max_response_bytes": (True, 1, False),
            "min_request_interval": (False, 0, False), "max_retry_after_seconds": (False, 0, False),
            "timeout": (False, 0.001, False), "max_request_seconds": (False, 0.001, False),
        }  # fmt: skip
        for key, (integer, low, nullable) in numbers.items():
            value = getattr(self, key)
            if value is None and nullable:
                continue
            kinds = int if integer else (int, float)
            if not isinstance(value, kinds) or isinstance(value, bool) or value < low:
                kind = "an integer" if integer else "a number"
                raise ConfigError(
                    f"{where}: {key} must be {kind} >= {low}{' or null' if nullable else ''}, got {value!r}"
                )
        if self.batch_size > 500:
            raise ConfigError(f"{where}: batch_size must be at most 500 (the API's gcmlimit), got {self.batch_size}")
        if not isinstance(self.category_is_taxon, bool):
            raise ConfigError(f"{where}: category_is_taxon must be true or false, got {self.category_is_taxon!r}")
        if not isinstance(self.user_agent, str) or not self.user_agent.strip():
            raise ConfigError(f"{where}: user_agent must name the crawler and a contact URL or address")
        if not isinstance(self.language, str) or not self.language.strip():
            raise ConfigError(f"{where}: language must be a language code such as 'en'")
        if isinstance(self.allow_local_hosts, str):
            raise ConfigError(f"{where}: allow_local_hosts must be a list, e.g. ['127.0.0.1:8080']")
        try:
            guard = AddressGuard.allowing(self.allow_local_hosts)
        except ValueError as exc:
            raise ConfigError(f"{where}: allow_local_hosts: {exc}") from None
        try:
            parts = urlsplit(self.api_url)
            local = parts.scheme == "http" and _allowlisted(guard, parts)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}: api_url {self.api_url!r} is not a URL ({exc})") from None
        if parts.scheme != "https" and not local:
            raise ConfigError(f"{where}: api_url must be https (plain http only for a host in allow_local_hosts)")
        self.url_rewrite = check_url_rewrite(self.url_rewrite, where)

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> Config:
        return config_from_dict(cls, options, "commons options")


def category_title(name: str) -> str:
    """``"iris_tectorum"`` or ``"Category:Iris tectorum"`` -> ``"Category:Iris tectorum"``, as MediaWiki spells it."""
    bare = name.strip()
    if bare[:9].lower() == "category:":
        bare = bare[9:]
    bare = " ".join(bare.replace("_", " ").split())
    return f"Category:{bare[:1].upper()}{bare[1:]}"


def _allowlisted(guard: AddressGuard, parts: Any) -> bool:
    """Whether the URL's host (a name or an address) is on the allowlist, at its port."""
    host, port = parts.hostname or "", parts.port or (443 if parts.scheme == "https" else 80)
    if guard.name_allowed(host, port):
        return True
    try:
        return guard.address_allowed(ipaddress.ip_address(host), port)
    except ValueError:
        return False


class _TextOnly(HTMLParser):
    """Collects the text of an HTML fragment (entities decoded); tags become word breaks, script/style vanish."""

    SKIP = frozenset({"script", "style"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skipping = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in self.SKIP:
            self.skipping += 1
        elif tag in ("br", "p", "div", "li", "td", "th", "tr", "dd", "dt"):
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self.skipping = max(self.skipping - 1, 0)
        elif tag in ("p", "div", "li", "td", "th", "tr", "dd", "dt"):
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self.skipping:
            self.parts.append(data)


def html_text(value: Any) -> str | None:
    """The text of an extmetadata HTML value, whitespace collapsed; None for a missing, empty or non-text value."""
    if not isinstance(value, str):
        return None
    parser = _TextOnly()
    parser.feed(value)
    parser.close()
    return " ".join("".join(parser.parts).split()) or None


def _meta(extmetadata: Any, key: str) -> Any:
    entry = extmetadata.get(key) if isinstance(extmetadata, dict) else None
    return entry.get("value") if isinstance(entry, dict) else None


class _Api:
    """Serial, paced, guarded GET requests to one MediaWiki API; answers as JSON objects, failures as SourceError."""

    def __init__(self, config: Config) -> None:
        self.config = config
        limits = FetchLimits(config.timeout, config.max_request_seconds, config.max_response_bytes)
        headers = {"User-Agent": config.user_agent, "Accept": "application/json"}
        guard = AddressGuard.allowing(config.allow_local_hosts)
        self.client = GuardedClient(guard, limits, headers, connections_per_host=1)
        self.next_start = 0.0  # monotonic time before which no request starts

    def query(self, params: dict[str, str], category: str) -> dict[str, Any]:
        config, where = self.config, f"{self.config.api_url} ({category})"
        params = {"action": "query", "format": "json", "formatversion": "2", **params}
        if config.maxlag is not None:
            params["maxlag"] = str(config.maxlag)
        url = f"{config.api_url}?{urlencode(params)}"
        for attempt in range(config.max_retries + 1):
            now = time.monotonic()
            if now < self.next_start:
                time.sleep(self.next_start - now)
            self.next_start = time.monotonic() + config.min_request_interval
            try:
                fetched = self.client.get(url)
            except (BlockedAddress, UnsafeURL, FetchRefused, urllib3.exceptions.HTTPError, OSError) as exc:
                raise SourceError(f"{where}: API request failed ({exc})") from None
            answer, wait = _judge(fetched.status, fetched.reason, fetched.headers, fetched.body, where)
            if wait is None:
                return answer
            if attempt == config.max_retries:
                raise SourceError(f"{where}: the API still asked us to wait after {config.max_retries} retries")
            if wait > config.max_retry_after_seconds:
                raise SourceError(
                    f"{where}: the API asked us to wait {wait:.0f} s (limit max_retry_after_seconds "
                    f"{config.max_retry_after_seconds:.0f})"
                )
            log.warning("%s: the API asked us to wait %.1f s (retry %d)", where, wait, attempt + 1)
            time.sleep(wait)
        raise AssertionError("unreachable")

    def close(self) -> None:
        self.client.clear()


def _judge(status: int, reason: str | None, headers: Any, body: bytes, where: str) -> tuple[dict, float | None]:
    """``(answer, None)`` for a usable answer, ``({}, seconds)`` when the API asks us to wait; else SourceError."""
    asked = retry_after_seconds(headers.get("Retry-After"))
    wait = DEFAULT_RETRY_SECONDS if asked is None else asked
    if status in RETRY_STATUSES:
        return {}, wait
    if not 200 <= status < 300:
        raise SourceError(f"{where}: HTTP Error {status}: {reason or ''}".rstrip())
    try:
        answer = json.loads(body)
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        raise SourceError(f"{where}: malformed JSON from the API ({exc}); starts {body[:80]!r}") from None
    if not isinstance(answer, dict):
        raise SourceError(f"{where}: expected a JSON object from the API, got {type(answer).__name__}")
    error = answer.get("error")
    if error is not None:
        error = error if isinstance(error, dict) else {"info": error}
        if error.get("code") == "maxlag":
            return {}, wait
        raise SourceError(f"{where}: API error {error.get('code')!r}: {error.get('info')}")
    if answer.get("warnings"):
        log.warning("%s: API warnings %s", where, json.dumps(answer["warnings"])[:500])
    return answer, None


def _answers(api: _Api, params: dict[str, str], category: str) -> Iterator[dict[str, Any]]:
    """Every answer of one query, sending each answer's whole ``continue`` object back until there is none."""
    sent: dict[str, str] = {}
    while True:
        answer = api.query({**params, **sent}, category)
        yield answer
        more = answer.get("continue")
        if not more:
            return
        if not isinstance(more, dict) or more == sent:
            raise SourceError(f"{api.config.api_url} ({category}): unusable or repeated continue object {more!r}")
        sent = {str(k): str(v) for k, v in more.items()}


def _listed(answer: dict[str, Any], key: str, where: str) -> list[dict[str, Any]]:
    """``answer["query"][key]`` as formatversion=2 writes it: a list of objects (empty when absent)."""
    query = answer.get("query") or {}
    items = query.get(key, []) if isinstance(query, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise SourceError(f"{where}: expected query.{key} as a list of objects (formatversion=2)")
    return items


def _file_batches(api: _Api, category: str) -> Iterator[list[dict[str, Any]]]:
    """The category's file pages, one completed batch at a time (imageinfo merged over continuation answers)."""
    config, where = api.config, f"{api.config.api_url} ({category})"
    params = {
        "generator": "categorymembers",
        "gcmtitle": category,
        "gcmtype": "file",
        "gcmlimit": str(config.batch_size),
        "prop": "imageinfo",
        "iiprop": "url|extmetadata|mime|size",
        "iiextmetadatafilter": "|".join(EXTMETADATA),
        "iiextmetadatalanguage": config.language,
    }
    if config.thumb_width:
        params["iiurlwidth"] = str(config.thumb_width)
    batch: dict[Any, dict[str, Any]] = {}
    for answer in _answers(api, params, category):
        for page in _listed(answer, "pages", where):
            merged = batch.setdefault(page.get("pageid") or page.get("title"), {})
            info = merged.get("imageinfo")
            merged.update(page)
            if info and not page.get("imageinfo"):  # a later answer of the batch carries other pages' imageinfo
                merged["imageinfo"] = info
        if answer.get("batchcomplete") or not answer.get("continue"):
            if batch:
                yield list(batch.values())
            batch = {}


def _subcategories(api: _Api, category: str) -> list[str]:
    where = f"{api.config.api_url} ({category})"
    params = {"list": "categorymembers", "cmtitle": category, "cmtype": "subcat", "cmlimit": "500"}
    titles = []
    for answer in _answers(api, params, category):
        for member in _listed(answer, "categorymembers", where):
            if not isinstance(member.get("title"), str):
                raise SourceError(f"{where}: a subcategory without a title: {member!r}")
            titles.append(member["title"])
    return titles


def _tree(api: _Api, root: str, depth: int, seen: set[str]) -> Iterator[str]:
    """``root`` and its subcategories breadth-first to ``depth``, skipping (and adding to) ``seen``."""
    queue = deque([(root, 0)])
    while queue:
        category, level = queue.popleft()
        if category in seen:  # the category graph has cycles, and trees overlap
            continue
        seen.add(category)
        yield category
        if level < depth:
            queue.extend((sub, level + 1) for sub in _subcategories(api, category))


def _media_problem(mime: Any, thumbnail: bool) -> str | None:
    """Why a file of this MIME type cannot become an image row; None when it can."""
    if mime in RASTER_MIME or (mime == SVG_MIME and thumbnail):
        return None
    if mime == SVG_MIME:
        return "SVG original: the download step cannot decode SVG (set thumb_width to use Commons' PNG rendering)"
    kind = mime.split("/")[0] if isinstance(mime, str) else ""
    if kind in ("video", "audio"):
        return f"{kind} file ({mime}), not an image"
    return f"media type {mime or '(none)'} is not an image the download step decodes ({', '.join(RASTER_MIME)})"


def _partial(config: Config, page: dict[str, Any], category: str, root: str, number: int) -> dict[str, Any]:
    infos = page.get("imageinfo")
    info = infos[0] if isinstance(infos, list) and infos and isinstance(infos[0], dict) else {}
    meta = info.get("extmetadata")
    raw_license = next((v.strip() for k in LICENSE_KEYS if isinstance(v := _meta(meta, k), str) and v.strip()), None)
    image_url = info.get("thumburl") if config.thumb_width else info.get("url")
    partial: dict[str, Any] = {
        "source": config.name,
        "source_record_id": str(page["pageid"]) if page.get("pageid") else page.get("title"),
        "domain": config.domain,
        "url": rewrite_url(image_url if isinstance(image_url, str) else None, config.url_rewrite or {}),
        "page_url": info.get("descriptionurl") if isinstance(info.get("descriptionurl"), str) else None,
        "original_text": html_text(_meta(meta, "ImageDescription")) or html_text(_meta(meta, "ObjectName")),
        "scientific_name": root.removeprefix("Category:") if config.category_is_taxon else None,
        "license": raw_license,
        "rights_holder": html_text(_meta(meta, "Artist")),
        "input_file": f"{config.api_url} ({category})",
        "input_row": number,
    }
    if not info:
        reject(partial, "imageinfo", f"no imageinfo for {page.get('title')!r} (file missing, or the API sent none)")
    elif problem := _media_problem(info.get("mime"), bool(config.thumb_width)):
        reject(partial, "mime", problem)
    elif config.thumb_width and not info.get("thumburl"):
        reject(partial, "thumburl", f"no thumbnail URL for {page.get('title')!r} at width {config.thumb_width}")
    return partial


def read(config: Config, ctx: CrawlContext) -> Iterator[dict]:
    """Yield one candidate row per file listed in the categories (rejected rows included, with their reason).

    A configured category with no file in its tree raises SourceError (a misspelt title lists nothing).
    """
    api = _Api(config)
    categories_read: set[str] = set()
    files_seen: set[str] = set()
    number = 0
    try:
        for root in config.categories:
            if root in categories_read:  # already read as a subcategory of an earlier root
                continue
            listed = 0
            for category in _tree(api, root, config.depth, categories_read):
                for batch in _file_batches(api, category):
                    listed += len(batch)
                    for page in batch:
                        key = str(page.get("pageid") or page.get("title"))
                        if key in files_seen:  # listed in two categories: one file, one row (the first listing)
                            continue
                        files_seen.add(key)
                        number += 1
                        yield build_row(_partial(config, page, category, root, number), ctx)
            if not listed:
                raise SourceError(
                    f"{config.api_url} ({root}): no files listed at depth {config.depth}; "
                    "check the title as Commons spells it"
                )
    finally:
        api.close()
