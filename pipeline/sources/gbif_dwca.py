"""Darwin Core Archives (occurrence core + its images) -> candidate rows, one per image.

Format: Darwin Core text guide (https://dwc.tdwg.org/text/): a zip, a tar (``.tgz``, ``.tar.gz``, ``.tar``) or
the folder either unpacks to, with ``meta.xml`` at its root or in one folder inside it; ``meta.xml`` declares the
core and extension files, their ``encoding``, ``fieldsTerminatedBy``, ``linesTerminatedBy``, ``fieldsEnclosedBy``,
``ignoreHeaderLines``, the ``<id>``/``<coreid>`` column and a ``<field index term>`` per column (or ``<field
default term>`` constants). Columns are found only through those term URIs, never by position.

Images come from the first of these the archive has (``media: auto``), or the one the ``media`` option names:
- ``multimedia``: GBIF's Multimedia extension (http://rs.gbif.org/terms/1.0/Multimedia, ``multimedia.txt`` in
  GBIF downloads; Pl@ntNet's GBIF datasets): ``dcterms:identifier`` is the image URL, ``dcterms:license`` (URL or
  code; empty -> the occurrence's license, as GBIF displays it), ``dcterms:rightsHolder`` or ``dcterms:creator``
  for the credit line, ``dcterms:title`` / ``description`` as original text, ``dcterms:references`` as the page;
- ``audubon``: the Audubon Core extension (http://rs.tdwg.org/ac/terms/Multimedia; museums, iDigBio, Symbiota
  and Specify exports, https://ac.tdwg.org/termlist/): ``ac:accessURI`` is the file (else ``dcterms:identifier``),
  ``ac:variantLiteral`` must be one of ``variants`` (thumbnails are not worth a download; an image published in
  two kept variants gives two rows, which the image dedup merges), the license from ``xmpRights:UsageTerms`` or
  ``xmpRights:WebStatement`` (then ``dcterms:rights``), ``xmpRights:Owner`` as rights holder,
  ``ac:furtherInformationURL`` as the page; ``dc:`` (elements/1.1) spellings of type, format, title, creator
  and rights are read too;
- ``associated_media``: no media extension, the URLs in the core's ``dwc:associatedMedia``, split on ``|`` (the
  Darwin Core recommendation; a URL may hold commas): one row per URL, the occurrence's license and holder.
In the extensions ``dcterms:type`` must be ``StillImage`` (``Sound``/``MovingImage`` rows are rejected; an
empty type is accepted when ``dcterms:format`` is ``image/*``). Taxonomy comes from the occurrence row
(kingdom..genus, specificEpithet / GBIF's ``species``, scientificName, taxonRank, vernacularName);
``basis_of_record`` keeps only some ``dwc:basisOfRecord`` values (e.g. herbarium sheets, ``PreservedSpecimen``,
left out).

``source_record_id`` = ``"{gbifID or core id}:{image URL}"``: stable when GBIF regenerates a
download in another row order; ``page_url`` = media or occurrence ``references``, else https://www.gbif.org/occurrence/{gbifID}.
Memory: the occurrence core (only the terms used) goes into a DuckDB database file in the spill space and is
looked up one batch of 8,192 media rows at a time; multimedia rows stream. Both stay flat with the archive's size.
Occurrences without a media row yield nothing (there is no image to crawl); their count is logged. A core id that
repeats, or a multimedia file without data rows, raises ``SourceError`` (naming file, row and id): a repeated id
would join its media to one occurrence by chance, and an empty extension would crawl nothing without a word.
``input_file`` of a row is ``"<archive>!<member>"``.

Parallel crawl: ``partitions: 16`` crawls the archive as 16 units (``<path>#partition=3/16``), occurrences and
media rows split by an md5 of the core id (:mod:`pipeline.sources.chunks`): each unit keeps only its share of
both, so the workers spread the join and each resumes on its own; the joined rows are the whole crawl's, ordered
by partition, then by media row.
"""

from __future__ import annotations

import itertools
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from pipeline.core import duck
from pipeline.core.schema import TAXONOMY_RANKS
from pipeline.sources import duck_text, dwca_sql
from pipeline.sources.base import (
    ConfigError,
    CrawlContext,
    SourceError,
    apply_taxon_filter,
    batches_of,
    build_row,
    check_count,
    check_taxon_filter,
    check_url_rewrite,
    config_from_dict,
    reject,
    rewrite_url,
)
from pipeline.sources.chunks import in_partition, partition_parts
from pipeline.sources.dwca_meta import Archive, FileSpec, no_media_rows, repeated_core_id, short_core_row
from pipeline.sources.textfiles import iter_rows

log = logging.getLogger(__name__)

DWC, DC, GBIF = "http://rs.tdwg.org/dwc/terms/", "http://purl.org/dc/terms/", "http://rs.gbif.org/terms/1.0/"
AC, DCE, XMP_RIGHTS = (
    "http://rs.tdwg.org/ac/terms/",
    "http://purl.org/dc/elements/1.1/",
    "http://ns.adobe.com/xap/1.0/rights/",
)
OCCURRENCE = DWC + "Occurrence"
MULTIMEDIA = GBIF + "Multimedia"  # GBIF's Simple Multimedia extension (GBIF downloads, Pl@ntNet)
AUDUBON = AC + "Multimedia"  # Audubon Core (museums, iDigBio, Symbiota portals, Specify)
ASSOCIATED_MEDIA = DWC + "associatedMedia"  # image URLs in the core itself, separated by "|"
MEDIA_KINDS = ("auto", "multimedia", "audubon", "associated_media")
# Occurrence terms we use (short name -> URI); only the core id is required.
OCCURRENCE_TERMS = {
    "gbifID": GBIF + "gbifID",
    "references": DC + "references",
    "license": DC + "license",
    "rightsHolder": DC + "rightsHolder",
    **{rank: DWC + rank for rank in TAXONOMY_RANKS[:-1]},
    "species": GBIF + "species",
    "specificEpithet": DWC + "specificEpithet",
    "scientificName": DWC + "scientificName",
    "taxonRank": DWC + "taxonRank",
    "vernacularName": DWC + "vernacularName",
    "basisOfRecord": DWC + "basisOfRecord",
}
# Media terms: the URIs that may carry each, first non-empty wins. GBIF's Multimedia extension uses dcterms; Audubon
# Core adds ac:accessURI (the file), ac:variantLiteral, xmpRights:UsageTerms / WebStatement (the license) and Owner.
MEDIA_TERMS = {
    "access_uri": (AC + "accessURI",),
    "identifier": (DC + "identifier",),
    "type": (DC + "type", DCE + "type"),
    "format": (DC + "format", DCE + "format"),
    "references": (DC + "references", AC + "furtherInformationURL"),
    "title": (DC + "title", DCE + "title"),
    "description": (DC + "description", DCE + "description", AC + "caption"),
    "creator": (DC + "creator", DCE + "creator"),
    "license": (DC + "license", XMP_RIGHTS + "UsageTerms", XMP_RIGHTS + "WebStatement", DC + "rights", DCE + "rights"),
    "rightsHolder": (DC + "rightsHolder", XMP_RIGHTS + "Owner"),
    "variant": (AC + "variantLiteral",),
}
STILL_IMAGE = ("stillimage", "http://purl.org/dc/dcmitype/stillimage")
BATCH_ROWS = 8_192  # core rows per insert, media rows per lookup


@dataclass
class Config:
    path: str  # DwC-A zip (e.g. a GBIF download), tar(.gz) or unpacked folder; local or an fsspec URL (s3://...)
    name: str = "gbif"  # registry name written to the `source` column
    min_rank: str | None = "species"  # reject identifications coarser than this taxonRank; None = any rank
    kingdoms: tuple[str, ...] = ("Plantae",)  # accepted kingdoms (dwc:kingdom); empty = all
    url_rewrite: dict[str, str] | None = None  # URL prefix -> replacement, for mirrors / offline samples
    media: str = "auto"  # auto | multimedia | audubon | associated_media: where the images are (auto: first found)
    # Audubon Core ac:variantLiteral values kept (case-insensitive); rows without one are kept. Thumbnails,
    # "Lower Quality" and "Offline" variants are not worth a download.
    variants: tuple[str, ...] = ("Best Quality", "Good Quality", "Medium Quality")
    # dwc:basisOfRecord values kept (case-insensitive), e.g. [HUMAN_OBSERVATION, MACHINE_OBSERVATION] to leave
    # herbarium sheets (PRESERVED_SPECIMEN) out; empty = all
    basis_of_record: tuple[str, ...] = ()
    partitions: int | None = None  # crawl as this many units (hash partitions of the core id); None = one

    def __post_init__(self) -> None:
        where = f"source {self.name!r} (gbif_dwca)"
        check_taxon_filter(where, self.kingdoms, self.min_rank)
        self.kingdoms = tuple(self.kingdoms)
        self.url_rewrite = check_url_rewrite(self.url_rewrite, where)
        if self.media not in MEDIA_KINDS:
            raise ConfigError(f"{where}: media {self.media!r} unknown; expected one of {', '.join(MEDIA_KINDS)}")
        for option in ("variants", "basis_of_record"):
            value = getattr(self, option)
            if isinstance(value, str) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{where}: {option} must be a list of strings")
            setattr(self, option, tuple(value))
        check_count(where, "partitions", self.partitions, "units")

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> Config:
        return config_from_dict(cls, options, "gbif_dwca options")


def _records(archive: Archive, spec: FileSpec) -> Iterator[tuple[int, int, list[str]]]:
    """(data row, line, fields) of one declared file."""
    with archive.open(spec.location) as binary:
        rows = iter_rows(
            binary,
            archive.label(spec.location),
            delimiter=spec.delimiter,
            quotechar=spec.quotechar,
            encoding=spec.encoding,
            skip_lines=spec.skip_lines,
        )
        for number, (line, fields) in enumerate(rows, start=1):
            yield number, line, fields


class _CoreOnDisk:
    """The occurrence core in a DuckDB database file beside the build's spill space, looked up one media batch at
    a time: memory stays flat however many occurrences the archive holds (a GBIF Plantae download has tens of
    millions), where a dict of them needed ~1 KB each."""

    def __init__(
        self, archive: Archive, core: FileSpec, ctx: CrawlContext, partition: tuple[int, int] | None = None
    ) -> None:
        self.folder = tempfile.mkdtemp(prefix="gbif-core-", dir=duck.spill_directory(ctx.duckdb, create=True))
        self.con = duck.connect(ctx.duckdb)
        self.con.execute(f"ATTACH {duck.literal(os.path.join(self.folder, 'core.duckdb'))} AS core_db")
        self.terms = list(OCCURRENCE_TERMS)
        columns = ", ".join(f"{duck_text.ident(name)} VARCHAR" for name in self.terms)
        self.con.execute(f"CREATE TABLE core_db.core (core_id VARCHAR, data_row BIGINT, line BIGINT, {columns})")
        self.con.execute("CREATE TABLE core_db.with_media (core_id VARCHAR)")
        self.label, self.location = archive.label(core.location), core.location
        self._load(archive, core, partition)

    def _load(self, archive: Archive, core: FileSpec, partition: tuple[int, int] | None) -> None:
        names = ["core_id", "data_row", "line", *self.terms]
        batch: list[list] = []
        for number, line, fields in _records(archive, core):
            if len(fields) <= core.max_index:
                raise short_core_row(self.label, number, line, core, len(fields))
            if partition and not in_partition(fields[core.id_index], *partition):
                continue
            batch.append([fields[core.id_index], number, line, *(core.value(fields, uri) for uri in
                                                                   OCCURRENCE_TERMS.values())])  # fmt: skip
            if len(batch) == BATCH_ROWS:
                self._insert("core", names, batch)
                batch = []
        self._insert("core", names, batch)
        repeat = self.con.sql(
            "SELECT core_id, data_row, line FROM core_db.core "
            "QUALIFY row_number() OVER (PARTITION BY core_id ORDER BY data_row) = 2 ORDER BY data_row LIMIT 1"
        ).fetchall()
        if repeat:
            core_id, number, line = repeat[0]
            raise repeated_core_id(self.label, number, line, core, core_id)

    def _insert(self, table: str, names: list[str], rows: list[list]) -> None:
        if not rows:
            return
        data = pa.table({name: [row[i] for row in rows] for i, name in enumerate(names)})
        self.con.register("_rows", data)
        self.con.execute(f"INSERT INTO core_db.{table} BY NAME SELECT * FROM _rows")
        self.con.unregister("_rows")

    def lookup(self, core_ids: list[str]) -> dict[str, dict[str, str | None]]:
        """The occurrences of one media batch, by core id (each id also noted as having media)."""
        self._insert("with_media", ["core_id"], [[core_id] for core_id in core_ids])
        self.con.register("_ids", pa.table({"core_id": core_ids}))
        found = self.con.sql(
            "SELECT c.* EXCLUDE (data_row, line) FROM core_db.core c SEMI JOIN _ids USING (core_id)"
        ).to_arrow_table()
        self.con.unregister("_ids")
        return {row.pop("core_id"): row for row in found.to_pylist()}

    def without_media(self) -> int:
        return self.con.sql(
            "SELECT count(*) FROM core_db.core ANTI JOIN (SELECT DISTINCT core_id FROM core_db.with_media) USING "
            "(core_id)"
        ).fetchall()[0][0]

    def close(self) -> None:
        self.con.close()
        shutil.rmtree(self.folder, ignore_errors=True)


def _taxon(occurrence: dict[str, str | None]) -> dict[str, Any]:
    ranks = {rank: occurrence.get(rank) for rank in TAXONOMY_RANKS[:-1]}
    species = occurrence.get("species")
    if not species and occurrence.get("genus") and occurrence.get("specificEpithet"):
        species = f"{occurrence['genus']} {occurrence['specificEpithet']}"
    ranks["species"] = species
    rank = (occurrence.get("taxonRank") or "").lower() or None
    # A canonical name (no authorship) makes the caption; scientificName carries authors ("Salvia officinalis L.").
    scientific = (species if rank in (None, "species") else None) or occurrence.get("scientificName") or species
    return {
        "scientific_name": scientific,
        "common_name": occurrence.get("vernacularName") or None,
        "taxon_rank": rank,
        "taxonomy": ranks,
    }


def parts(config: Config) -> list[str]:
    """With ``partitions``, one crawl unit per hash partition of the archive; none otherwise (read whole)."""
    return partition_parts(config.path, config.partitions or 1)


def read_batches(
    config: Config, ctx: CrawlContext, batch_rows: int = 65_536, partition: tuple[int, int] | None = None
) -> Iterator[pa.RecordBatch]:
    """The candidate rows as Arrow batches: one DuckDB query (:mod:`.dwca_sql`) for unquoted UTF-8 media
    extensions (GBIF downloads), else :func:`read`'s rows, batched; of hash ``partition`` ``(k, n)`` only, if
    given."""
    archive = Archive(config.path)
    core, extensions = archive.describe(OCCURRENCE)
    media = _media_file(archive, core, extensions, config.media)
    if media is not None and dwca_sql.eligible(core, media):
        terms = (OCCURRENCE_TERMS, MEDIA_TERMS)
        batches = dwca_sql.read_batches(config, ctx, archive, core, media, terms, batch_rows, partition)
        if batches is not None:
            yield from batches
            return
    yield from batches_of(read(config, ctx, partition), batch_rows)


def read(config: Config, ctx: CrawlContext, partition: tuple[int, int] | None = None) -> Iterator[dict]:
    """Yield one candidate row per image of the archive (rejected rows included, with their reason); of the
    occurrences in hash ``partition`` ``(k, n)`` of the core id only, if given."""
    archive = Archive(config.path)
    core, extensions = archive.describe(OCCURRENCE)
    media = _media_file(archive, core, extensions, config.media)
    if media is None:
        yield from _read_associated_media(config, ctx, archive, core, partition)
        return
    occurrences = _CoreOnDisk(archive, core, ctx, partition)
    try:
        records = _records(archive, media)
        label, number = archive.label(media.location), 0
        while batch := list(itertools.islice(records, BATCH_ROWS)):
            number = batch[-1][0]  # the file's records so far, whichever partition they fall in
            keyed = [(record, record[2][media.id_index] if len(record[2]) > media.id_index else "") for record in batch]
            if partition:  # only this partition's rows are looked up and yielded
                keyed = [(record, core_id) for record, core_id in keyed if in_partition(core_id, *partition)]
            found = occurrences.lookup([core_id for _, core_id in keyed])
            for (row_number, line, fields), core_id in keyed:
                values = {name: _media_value(media, fields, uris) for name, uris in MEDIA_TERMS.items()}
                occurrence, problem = found.get(core_id), None
                if len(fields) <= media.max_index:
                    problem = ("(row)", f"line {line}: expected {media.max_index + 1} fields, found {len(fields)}")
                elif occurrence is None:
                    problem = ("coreid", f"occurrence {core_id!r} not in {core.location}")
                yield _candidate(
                    config, ctx, values, occurrence, core_id, (label, row_number), problem, check_type=True
                )
        if number == 0:
            raise no_media_rows(label, media)
        without_media = occurrences.without_media()
        if without_media:
            log.info(
                "%s: %d occurrence(s) have no multimedia row (no image to crawl)", occurrences.label, without_media
            )
    finally:
        occurrences.close()


def _media_file(archive: Archive, core: FileSpec, extensions: list[FileSpec], kind: str) -> FileSpec | None:
    """The extension that lists the images, or None when they are the core's associatedMedia."""
    label = archive.label("meta.xml")
    wanted = {"multimedia": [MULTIMEDIA], "audubon": [AUDUBON], "associated_media": []}.get(kind, [MULTIMEDIA, AUDUBON])
    for row_type in wanted:
        extension = next((e for e in extensions if e.row_type == row_type), None)
        if extension is None:
            continue
        if not any(uri in extension.indexes for uri in (*MEDIA_TERMS["access_uri"], *MEDIA_TERMS["identifier"])):
            required = "[ac:accessURI or dcterms:identifier]" if row_type == AUDUBON else f"[{DC}identifier]"
            raise SourceError(
                f"{label}: <extension> {extension.location} has no <field> for required term(s) {required}"
            )
        return extension
    if kind in ("auto", "associated_media") and (ASSOCIATED_MEDIA in core.indexes or ASSOCIATED_MEDIA in core.defaults):
        return None
    found = [e.row_type for e in extensions]
    expected = {"multimedia": MULTIMEDIA, "audubon": AUDUBON, "associated_media": "(none)"}.get(
        kind, f"{MULTIMEDIA} or {AUDUBON}"
    )
    raise SourceError(
        f"{label}: no images: no <extension> with rowType {expected} (found {found}) and no {ASSOCIATED_MEDIA} "
        f"in the core {core.location}" + ("" if kind in ("auto", "associated_media") else f" (media: {kind})")
    )


def _media_value(spec: FileSpec, fields: list[str], uris: tuple[str, ...]) -> str | None:
    return next((value for uri in uris if (value := spec.value(fields, uri)) is not None), None)


def _read_associated_media(
    config: Config, ctx: CrawlContext, archive: Archive, core: FileSpec, partition: tuple[int, int] | None
) -> Iterator[dict]:
    """Occurrence-core archives without a media extension: one row per URL of ``dwc:associatedMedia``.

    The list is split on "|" (the Darwin Core recommendation; URLs may hold commas and semicolons). A core row too
    short to read yields one rejected row; a core row without URLs yields none (their count is logged).
    """
    label, without_media = archive.label(core.location), 0
    for number, line, fields in _records(archive, core):
        core_id = fields[core.id_index] if len(fields) > core.id_index else ""
        if partition and not in_partition(core_id, *partition):
            continue
        if len(fields) <= core.max_index:
            problem = ("(row)", f"line {line}: expected at least {core.max_index + 1} fields, found {len(fields)}")
            values = dict.fromkeys(MEDIA_TERMS)
            yield _candidate(config, ctx, values, None, core_id, (label, number), problem, check_type=False)
            continue
        occurrence = {name: core.value(fields, uri) for name, uri in OCCURRENCE_TERMS.items()}
        urls = [url.strip() for url in (core.value(fields, ASSOCIATED_MEDIA) or "").split("|") if url.strip()]
        without_media += not urls
        for url in urls:
            values = {**dict.fromkeys(MEDIA_TERMS), "identifier": url}
            yield _candidate(config, ctx, values, occurrence, core_id, (label, number), None, check_type=False)
    if without_media:
        log.info("%s: %d occurrence(s) have no associatedMedia (no image to crawl)", label, without_media)


def _candidate(
    config: Config,
    ctx: CrawlContext,
    values: dict[str, str | None],
    occurrence: dict[str, str | None] | None,
    core_id: str,
    where: tuple[str, int],
    problem: tuple[str, str] | None,
    check_type: bool,
) -> dict:
    """The candidate row of one image and its occurrence (None when unknown); ``problem`` = (field, message) of
    a failure found while reading (a malformed row, an unknown occurrence), the first reason of the row."""
    record_id = (occurrence or {}).get("gbifID") or core_id
    url = values["access_uri"] or values["identifier"]
    partial: dict[str, Any] = {
        "source": config.name,
        "source_record_id": f"{record_id}:{url}",
        "domain": "plant",
        "url": rewrite_url(url, config.url_rewrite or {}),
        "original_text": values["title"] or values["description"],
        "input_file": where[0],
        "input_row": where[1],
    }
    if problem:
        reject(partial, *problem)
    if occurrence is not None:
        partial.update(_taxon(occurrence))
        gbif_id = occurrence.get("gbifID")
        partial["page_url"] = (
            values["references"]
            or occurrence.get("references")
            or (f"https://www.gbif.org/occurrence/{gbif_id}" if gbif_id else None)
        )
        apply_taxon_filter(partial, config.kingdoms, config.min_rank, "taxonRank", "kingdom")
        basis = occurrence.get("basisOfRecord") or ""
        if config.basis_of_record and basis.lower() not in {b.lower() for b in config.basis_of_record}:
            shown = ", ".join(config.basis_of_record)
            reject(partial, "basisOfRecord", f"basis of record {basis or '(empty)'} not in [{shown}]")
    media_type = (values["type"] or "").strip()
    if (
        check_type
        and media_type.lower() not in STILL_IMAGE
        and (media_type or not (values["format"] or "").startswith("image/"))
    ):
        reject(
            partial,
            "type",
            f"media type {media_type or '(empty, format ' + str(values['format']) + ')'} is not StillImage",
        )
    variant = (values["variant"] or "").strip()
    if variant and config.variants and variant.lower() not in {v.lower() for v in config.variants}:
        reject(partial, "variantLiteral", f"variant {variant!r} not in [{', '.join(config.variants)}]")
    partial["license"] = values["license"] or (occurrence or {}).get("license")
    partial["rights_holder"] = values["rightsHolder"] or values["creator"] or (occurrence or {}).get("rightsHolder")
    return build_row(partial, ctx)
