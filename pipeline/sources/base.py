"""The adapter contract: crawl context, errors, typed-config loading and the one candidate-row builder.

An adapter module exposes ``Config`` (a dataclass, built with :func:`config_from_dict`) and
``read(config, ctx) -> Iterator[dict]``. It fills what its source knows (url, taxon, raw license, provenance) and
hands the partial dict to :func:`build_row`, which applies the rules every source shares: stable ``sample_id``,
caption variants and the recipe's choice, URL scheme check, license normalisation, status and error text.
Every input row yields exactly one candidate row; a row that cannot be used is ``rejected`` with an ``error`` that
names the file, the row and the field. Problems with a whole file raise :class:`SourceError` instead.
"""

from __future__ import annotations

import dataclasses
import glob
import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pyarrow as pa

from pipeline.core.config import DuckDBConfig
from pipeline.core.schema import CANDIDATE_SCHEMA, STATUS_PENDING, STATUS_REJECTED, TAXONOMY_RANKS, sample_id_for
from pipeline.net.urls import UnsafeURL, to_uri
from pipeline.sources import captions, licenses

CANDIDATE_COLUMNS = tuple(CANDIDATE_SCHEMA.names)
WEB_SCHEMES = ("http", "https")


class SourceError(ValueError):
    """A file-level problem (missing file or column, broken archive, bad bytes); the message names file and row."""


class ConfigError(ValueError):
    """An adapter configuration that does not match its ``Config`` dataclass."""


@dataclass(frozen=True)
class CrawlContext:
    caption_style: str = "dalip"  # one of pipeline.sources.captions.CAPTION_STYLES, chosen by the recipe
    allowed_schemes: tuple[str, ...] = WEB_SCHEMES  # URL schemes a crawled web source may emit
    duckdb: DuckDBConfig | None = None  # limits for adapters that join their export in DuckDB (the recipe's)

    def __post_init__(self) -> None:
        if self.caption_style not in captions.CAPTION_STYLES:
            raise ConfigError(
                f"caption_style {self.caption_style!r} unknown; expected one of {', '.join(captions.CAPTION_STYLES)}"
            )
        object.__setattr__(self, "allowed_schemes", tuple(s.lower() for s in self.allowed_schemes))


C = TypeVar("C")


def config_from_dict(cls: type[C], options: Mapping[str, Any], where: str = "source options") -> C:
    """Build an adapter ``Config`` from recipe YAML, naming unknown and missing keys (values: ``__post_init__``)."""
    if not isinstance(options, Mapping):
        raise ConfigError(f"{where}: expected a mapping of options, got {type(options).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(options) - set(fields))
    if unknown:
        raise ConfigError(f"{where}: unknown option(s) {unknown} for {cls.__module__}; known: {sorted(fields)}")
    missing = sorted(
        name
        for name, f in fields.items()
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING and name not in options
    )
    if missing:
        raise ConfigError(f"{where}: missing required option(s) {missing} for {cls.__module__}")
    return cls(**options)


def check_url_rewrite(url_rewrite: Mapping[str, str] | None, where: str) -> dict[str, str]:
    """Validate the ``url_rewrite`` option shared by all adapters (prefix -> replacement, for mirrors/samples)."""
    if url_rewrite is None:
        return {}
    if not isinstance(url_rewrite, Mapping) or not all(
        isinstance(k, str) and k and isinstance(v, str) for k, v in url_rewrite.items()
    ):
        raise ConfigError(f"{where}: url_rewrite must map non-empty URL prefixes to replacement strings")
    return dict(url_rewrite)


def rewrite_url(url: str | None, rewrites: Mapping[str, str]) -> str | None:
    """Apply the longest matching prefix rewrite (for mirrors / offline samples); other URLs pass unchanged."""
    if not url or not rewrites:
        return url
    for prefix in sorted(rewrites, key=len, reverse=True):
        if url.startswith(prefix):
            return rewrites[prefix] + url[len(prefix) :]
    return url


def location(partial: Mapping[str, Any], field: str) -> str:
    """``"<file> row <n>, field <name>"``: the prefix of every row-level error."""
    return f"{partial.get('input_file')} row {partial.get('input_row')}, field {field}"


def reject(partial: dict[str, Any], field: str, message: str) -> dict[str, Any]:
    """Mark a partial row rejected (first reason wins) and return it, for adapter-specific rules."""
    if partial.get("status") != STATUS_REJECTED:
        partial["status"] = STATUS_REJECTED
        partial["error"] = f"{location(partial, field)}: {message}"
    return partial


# What a pre-downloaded dataset (webdataset_shards, parquet_images) can fill from its own fields, by recipe mapping.
MAPPABLE_FIELDS = ("source_record_id", "original_text", "scientific_name", "common_name", "taxon_rank", "taxonomy",
                   "license", "rights_holder", "page_url")  # fmt: skip


def local_files(path: str, suffix: str, what: str = "files") -> list[Path]:
    """The files ``path`` names, resolved and sorted: a folder's ``*<suffix>`` files, a glob's matches, or the one
    file; ``SourceError`` when there is none (a local source's inputs, e.g. its shards)."""
    folder = Path(path)
    if folder.is_dir():
        found = sorted(p for p in folder.iterdir() if p.suffix == suffix and p.is_file())
    elif any(c in path for c in "*?["):
        found = sorted(Path(p) for p in glob.glob(path))
    else:
        found = [folder]
    if not found:
        raise SourceError(f"{path}: no {suffix} {what} there")
    return [p.resolve() for p in found]


def batches_of(rows: Iterable[dict], batch_rows: int) -> Iterator[pa.RecordBatch]:
    """Candidate-row dicts as Arrow batches of ``CANDIDATE_SCHEMA``, ``batch_rows`` at a time."""
    rows = iter(rows)
    while batch := list(itertools.islice(rows, batch_rows)):
        yield pa.RecordBatch.from_pylist(batch, schema=CANDIDATE_SCHEMA)


def full_taxonomy(known: Mapping[str, str | None] | None) -> dict[str, str | None] | None:
    """Taxonomy struct with every rank key (None where unknown); None when no rank is known."""
    if not known:
        return None
    taxonomy = {rank: (known.get(rank) or None) for rank in TAXONOMY_RANKS}
    return taxonomy if any(taxonomy.values()) else None


def build_row(partial: Mapping[str, Any], ctx: CrawlContext, allowed_schemes: tuple[str, ...] | None = None) -> dict:
    """Turn an adapter's partial dict into a full candidate row (all CANDIDATE_SCHEMA columns).

    ``partial["license"]`` is the raw code or URL as published. Rules, first failing one wins: an earlier
    adapter rejection, URL (stripped; must parse, scheme allowed), license, caption. ``sample_id`` comes from the
    source record id, else the URL, else the input location, so even a rejected row keeps a stable id.
    """
    row: dict[str, Any] = {column: partial.get(column) for column in CANDIDATE_COLUMNS}
    row["status"] = partial.get("status") or STATUS_PENDING
    row["url"] = (row["url"] or "").strip() or None  # exports pad URLs with spaces and line ends
    row["taxonomy"] = full_taxonomy(partial.get("taxonomy"))
    record = row["source_record_id"] or row["url"] or f"{row['input_file']}:{row['input_row']}"
    row["sample_id"] = sample_id_for(row["source"], str(record))

    schemes = allowed_schemes if allowed_schemes is not None else ctx.allowed_schemes
    uri, url_error = check_url(row["url"], schemes)
    if url_error:
        reject(row, "url", url_error)
    elif uri != row["url"]:  # the IRI as a client sends it; the export's spelling kept beside it
        row["url"], row["url_original"] = uri, row["url"]

    raw_license = row["license"]
    try:
        lic = licenses.normalize_license(raw_license)
        row["license"], row["license_url"] = lic.code, lic.url
        if not row["attribution"]:
            row["attribution"] = licenses.attribution_line(row["rights_holder"], lic)
    except licenses.LicenseError as exc:
        row["license"] = raw_license or None  # keep the raw value so the rejection can be audited in SQL
        reject(row, "license", str(exc))

    variants = captions.build_caption_variants(
        row["scientific_name"], row["common_name"], row["taxonomy"], row["original_text"]
    )
    row["caption_variants"] = variants or None
    try:
        row["caption"], row["caption_kind"] = captions.choose_caption(variants, ctx.caption_style)
    except captions.NoCaption as exc:
        reject(row, "caption", str(exc))
    return row


def check_url(url: str | None, schemes: tuple[str, ...]) -> tuple[str | None, str | None]:
    """``(uri, None)`` for a usable (already stripped) URL, its IRI percent-encoded; ``(None, why)`` otherwise."""
    url = url or ""
    scheme, invalid = _scheme_of(url)
    if not url:
        return None, "empty image URL"
    if invalid:
        return None, f"invalid URL ({invalid}): {url[:200]}"
    if scheme not in schemes:
        return None, f"URL scheme {scheme or '(none)'!r} not allowed (allowed: {', '.join(schemes)}): {url[:200]}"
    try:
        return to_uri(url), None
    except UnsafeURL as err:
        return None, str(err)


def _scheme_of(url: str) -> tuple[str, str | None]:
    """``(lowercased scheme, None)``, or ``("", why)`` for a URL urllib cannot parse (``http://[::1/``, bad port)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (parsing the port is the check: out of range or not a number raises)
    except ValueError as exc:
        return "", str(exc)
    return parts.scheme.lower(), None


# iNaturalist's rank levels (also used for GBIF's taxonRank, lowercased): lower is finer.
RANK_LEVELS = {
    "kingdom": 70, "phylum": 60, "subphylum": 57, "class": 50, "subclass": 47, "order": 40, "suborder": 37,
    "family": 30, "subfamily": 27, "tribe": 25, "genus": 20, "subgenus": 15, "section": 13, "complex": 11,
    "species": 10, "hybrid": 10, "subspecies": 5, "variety": 5, "form": 5, "infrahybrid": 5,
}  # fmt: skip


def check_count(config_where: str, option: str, value: Any, of: str) -> None:
    """An option counting crawl ``of`` (``partitions``: units; ``chunk_rows``: rows) is None or a positive int."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{config_where}: {option} must be a positive number of {of}, got {value!r}")


def check_taxon_filter(config_where: str, kingdoms: tuple[str, ...], min_rank: str | None) -> None:
    """Validate the kingdom / min_rank options shared by the biodiversity adapters."""
    if min_rank is not None and min_rank not in RANK_LEVELS:
        raise ConfigError(f"{config_where}: min_rank {min_rank!r} unknown; expected one of {sorted(RANK_LEVELS)}")
    if isinstance(kingdoms, str) or not all(isinstance(k, str) for k in kingdoms):
        raise ConfigError(f"{config_where}: kingdoms must be a list of kingdom names, e.g. [Plantae]")


def apply_taxon_filter(
    partial: dict[str, Any], kingdoms: tuple[str, ...], min_rank: str | None, rank_field: str, kingdom_field: str
) -> None:
    """Reject rows outside the kingdom filter or identified coarser than ``min_rank`` (reasons in ``error``)."""
    kingdom = (partial.get("taxonomy") or {}).get("kingdom")
    if kingdoms and kingdom not in kingdoms:
        reject(partial, kingdom_field, f"taxon filter: kingdom {kingdom or '(unknown)'} not in [{', '.join(kingdoms)}]")
    rank = (partial.get("taxon_rank") or "").lower()
    if min_rank is not None:
        level = RANK_LEVELS.get(rank)
        if level is None or level > RANK_LEVELS[min_rank]:
            reject(partial, rank_field, f"taxon filter: rank {rank or '(unknown)'} is coarser than min_rank {min_rank}")
