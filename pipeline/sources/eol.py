"""Encyclopedia of Life media manifest (+ an optional page -> taxon map) -> candidate rows, one per manifest row.

Format: EOL's image list (https://opendata.eol.org/dataset/images-list, download
https://eol.org/data/media_manifest.tgz), written by ``Medium::ManifestExporter`` in EOL's publishing code
(https://github.com/EOL/publishing, ``app/models/medium/manifest_exporter.rb``) and used to build TreeOfLife-10M
(https://github.com/Imageomics/bioclip, ``scripts/get_media_manifest.py``). A Ruby ``CSV`` file: comma-separated,
``"``-quoted where needed, one row per image medium, columns

    EOL content ID, EOL page ID, Medium Source URL, EOL Full-Size Copy URL, License Name, Copyright Owner

The tgz holds parts ``media_manifest_1.csv``, ``_2``, ... of 100,000 rows and only part 1 has the header: read
one combined file (bioclip's ``get_media_manifest.py`` writes it; ``cat`` of the parts in numeric order does too),
optionally gzipped, local or an fsspec URL. Extra columns are ignored.

- url: ``EOL Full-Size Copy URL`` (EOL's own copy on content.eol.org, which EOL recommends for download and
  TreeOfLife used) or, with ``prefer: source``, ``Medium Source URL`` (the provider's original); the other one
  when the preferred one is empty.
- ``source_record_id``: ``"{page id}:{Medium Source URL}"``; ``"{page id}:eol-content-{content id}"`` when the
  medium has no source URL. Page ids are stable, content ids are not (EOL renumbers media when it re-harvests),
  so the id (and ``sample_id``) survives a new manifest unless it fell back to the content id. It does not depend
  on ``prefer``. Two media of one page with the same source URL share a ``sample_id`` (by design: same image).
- page_url: ``https://eol.org/pages/{page id}`` (the taxon page; the medium page ``/media/{content id}`` is not
  stable). License: ``License Name`` as EOL spells it (``cc-by-3.0``, ``cc-by-nc-sa 2.0``, ``cc-by``,
  ``public domain``, ``cc-publicdomain``, ...) normalised by ``pipeline.sources.licenses``; names that are not
  licenses (``No known copyright restrictions``) are rejected, never guessed. Rights holder: ``Copyright Owner``.

Taxa: the manifest names none. ``pages`` is a CSV (comma, quoted, header; ``.gz`` fine) with one row per page:
``page_id``, ``scientific_name`` and optionally ``common_name``, ``taxon_rank`` and the ranks ``kingdom`` ..
``species`` (``species`` the binomial, as in the other sources). ``pages_columns`` renames them, e.g.
``{page_id: eol_page_id, common_name: common}`` for TreeOfLife-style columns. Build it from EOL's Dynamic
Hierarchy (``taxon.tab``: ``eolID``, ``canonicalName``, ``taxonRank``, walking ``parentNameUsageID``). Without
``pages`` (and with ``kingdoms: []``) no row has a taxon or text, so ``build_row`` rejects each at its caption.
A page missing from the map is a rejected row; a repeated page id or a malformed row in the map is a
``SourceError`` (its rows would join by chance or carry broken taxa).

Limitation: the pages map is held in memory as a dict (a few hundred bytes a page, rank names interned): fine for
a map cut to the kingdoms crawled (EOL's plant pages), heavy for all of EOL's millions of pages. A later version
should look pages up on disk per batch of manifest rows, as ``gbif_dwca`` does with its occurrence core.
"""

from __future__ import annotations

import posixpath
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.io import is_local
from pipeline.core.schema import TAXONOMY_RANKS
from pipeline.sources.base import (
    ConfigError,
    CrawlContext,
    SourceError,
    apply_taxon_filter,
    build_row,
    check_taxon_filter,
    check_url_rewrite,
    config_from_dict,
    reject,
    rewrite_url,
)
from pipeline.sources.textfiles import Record, read_table

CONTENT_ID, PAGE_ID = "EOL content ID", "EOL page ID"
SOURCE_URL, COPY_URL = "Medium Source URL", "EOL Full-Size Copy URL"
LICENSE, OWNER = "License Name", "Copyright Owner"
MANIFEST_COLUMNS = (CONTENT_ID, PAGE_ID, SOURCE_URL, COPY_URL, LICENSE, OWNER)
PREFER = {"eol_copy": (COPY_URL, SOURCE_URL), "source": (SOURCE_URL, COPY_URL)}  # choice -> (first, fallback)
PAGE_FIELDS = ("page_id", "scientific_name", "common_name", "taxon_rank", *TAXONOMY_RANKS)
PAGE_REQUIRED = ("page_id", "scientific_name")
PAGE_URL = "https://eol.org/pages/{}"


@dataclass
class Config:
    path: str  # combined media manifest (.csv or .csv.gz), local or an fsspec URL
    name: str = "eol"  # registry name written to the `source` column
    pages: str | None = None  # page -> taxon CSV (see module doc); a relative path is next to `path`
    pages_columns: dict[str, str] | None = None  # field -> header name in `pages`, e.g. {page_id: eol_page_id}
    prefer: str = "eol_copy"  # eol_copy | source: which URL to fetch (the other when it is empty)
    kingdoms: tuple[str, ...] = ("Plantae",)  # accepted kingdoms (pages' kingdom column); empty = all
    domain: str = "plant"  # "plant" or "general"
    url_rewrite: dict[str, str] | None = None  # URL prefix -> replacement, for mirrors / offline samples

    def __post_init__(self) -> None:
        where = f"source {self.name!r} (eol)"
        if self.prefer not in PREFER:
            raise ConfigError(f"{where}: prefer {self.prefer!r} unknown; expected one of {', '.join(PREFER)}")
        if self.domain not in ("plant", "general"):
            raise ConfigError(f"{where}: domain {self.domain!r} unknown; expected plant or general")
        check_taxon_filter(where, self.kingdoms, None)
        self.kingdoms = tuple(self.kingdoms)
        if self.kingdoms and not self.pages:
            raise ConfigError(
                f"{where}: kingdoms {list(self.kingdoms)} need a pages file with a kingdom column (the manifest "
                "names no taxa); set pages, or kingdoms: [] to read without a taxon filter"
            )
        columns = self.pages_columns or {}
        if not isinstance(columns, dict) or not all(isinstance(v, str) and v for v in columns.values()):
            raise ConfigError(f"{where}: pages_columns must map fields to header names, e.g. {{page_id: eol_page_id}}")
        unknown = sorted(set(columns) - set(PAGE_FIELDS))
        if unknown:
            raise ConfigError(f"{where}: pages_columns names unknown field(s) {unknown}; known: {list(PAGE_FIELDS)}")
        self.pages_columns = {field: columns.get(field, field) for field in PAGE_FIELDS}
        self.url_rewrite = check_url_rewrite(self.url_rewrite, where)

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> Config:
        return config_from_dict(cls, options, "eol options")


def pages_path(config: Config) -> str | None:
    """``pages`` as given when absolute or a URL, else next to the manifest."""
    if not config.pages or "://" in config.pages:
        return config.pages
    if is_local(config.path):
        return str(Path(config.path).parent / config.pages)
    return posixpath.join(posixpath.dirname(config.path), config.pages)


def load_pages(config: Config, path: str) -> tuple[dict[str, tuple[str | None, ...]], tuple[str, ...]]:
    """``({page id: values}, fields)``: the map's values in ``fields`` order (those its header has)."""
    header_of = config.pages_columns or {}
    required = [header_of[f] for f in PAGE_REQUIRED] + ([header_of["kingdom"]] if config.kingdoms else [])
    pages: dict[str, tuple[str | None, ...]] = {}
    fields: tuple[str, ...] = ()
    for record in read_table(path, required=required, delimiter=",", quotechar='"'):
        if not fields:  # the header's columns; every record has them all (None where a row is short)
            fields = tuple(f for f in PAGE_FIELDS[1:] if header_of[f] in record.values)
        where = f"{path} row {record.row} (line {record.line})"
        if record.problem:
            raise SourceError(f"{where}: {record.problem}")
        page_id = (record.values[header_of["page_id"]] or "").strip()
        if not page_id:
            raise SourceError(f"{where}, field {header_of['page_id']}: empty page id")
        if page_id in pages:
            raise SourceError(f"{where}, field {header_of['page_id']}: page {page_id!r} repeats an earlier row")
        pages[page_id] = tuple(_page_value(record.values[header_of[f]], f) for f in fields)
    return pages, fields


def _page_value(value: str | None, field: str) -> str | None:
    value = (value or "").strip() or None
    # Names of ranks above species repeat across pages: one string object each keeps the map small.
    return sys.intern(value) if value and field in TAXONOMY_RANKS[:-1] else value


def read(config: Config, ctx: CrawlContext) -> Iterator[dict]:
    """Yield one candidate row per manifest row (rejected rows included, with their reason)."""
    pages_file = pages_path(config)
    pages, fields = load_pages(config, pages_file) if pages_file else ({}, ())
    records = read_table(config.path, required=MANIFEST_COLUMNS, delimiter=",", quotechar='"')
    number = 0
    for record in records:
        number = record.row
        found = pages.get(_text(record.values, PAGE_ID))
        taxon = dict(zip(fields, found, strict=True)) if found is not None else None
        yield _candidate(config, ctx, record, pages_file, taxon)
    if number == 0:
        raise SourceError(f"{config.path}: no data rows after the header; an empty manifest gives no image to crawl")


def _text(values: dict[str, str | None], column: str) -> str:
    return (values.get(column) or "").strip()


def _candidate(
    config: Config, ctx: CrawlContext, record: Record, pages_file: str | None, taxon: dict[str, str | None] | None
) -> dict:
    """The candidate row of one manifest row and its page's taxon (None: no pages file, or the page is not in it)."""
    values = record.values
    page_id, content_id, source_url = (_text(values, c) for c in (PAGE_ID, CONTENT_ID, SOURCE_URL))
    first, fallback = PREFER[config.prefer]
    url = _text(values, first) or _text(values, fallback)
    medium = source_url or (f"eol-content-{content_id}" if content_id else "")
    partial: dict[str, Any] = {
        "source": config.name,
        "source_record_id": f"{page_id}:{medium}" if page_id and medium else None,
        "domain": config.domain,
        "url": rewrite_url(url, config.url_rewrite or {}) or None,
        "page_url": PAGE_URL.format(page_id) if page_id.isdigit() else None,
        "license": values.get(LICENSE),
        "rights_holder": _text(values, OWNER) or None,
        "input_file": config.path,
        "input_row": record.row,
    }
    if taxon is not None:
        partial.update(
            scientific_name=taxon.get("scientific_name"),
            common_name=taxon.get("common_name"),
            taxon_rank=(taxon.get("taxon_rank") or "").lower() or None,
            taxonomy={rank: taxon.get(rank) for rank in TAXONOMY_RANKS},
        )
    if record.problem:
        reject(partial, "(row)", f"line {record.line}: {record.problem}")
    if not page_id.isdigit():
        reject(partial, PAGE_ID, f"{page_id!r} is not an EOL page id (digits)" if page_id else "empty page id")
    if not url:
        reject(partial, f"{first}, {fallback}", "both empty; no image URL to fetch")
    if pages_file and taxon is None:
        reject(partial, PAGE_ID, f"page {page_id} not in the pages file {pages_file}")
    elif pages_file and config.kingdoms:
        kingdom_column = "pages." + (config.pages_columns or {})["kingdom"]
        apply_taxon_filter(partial, config.kingdoms, None, "pages.taxon_rank", kingdom_column)
    return build_row(partial, ctx)
