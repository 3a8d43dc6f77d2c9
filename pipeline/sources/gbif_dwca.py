"""GBIF Darwin Core Archive (occurrence core + multimedia extension) -> candidate rows, one per multimedia row.

Format: Darwin Core text guide (https://dwc.tdwg.org/text/): a zip, a tar (``.tgz``, ``.tar.gz``, ``.tar``) or
the folder either unpacks to, with ``meta.xml`` at its root or in one folder inside it; ``meta.xml`` declares the
core and extension files, their ``encoding``, ``fieldsTerminatedBy``, ``linesTerminatedBy``, ``fieldsEnclosedBy``,
``ignoreHeaderLines``, the ``<id>``/``<coreid>`` column and a ``<field index term>`` per column (or ``<field
default term>`` constants). Columns are found only through those term URIs, never by position.
Images come from GBIF's Multimedia extension (http://rs.gbif.org/terms/1.0/Multimedia, row type of
``multimedia.txt`` in GBIF downloads): ``dc:identifier`` is the image URL, ``dc:type`` must be ``StillImage``
(``Sound``/``MovingImage`` rows are rejected; an empty type is accepted when ``dc:format`` is ``image/*``),
``dcterms:license`` (URL or code; empty -> the occurrence's license, as GBIF displays it), ``dcterms:rightsHolder``
or ``dc:creator`` for the credit line. Taxonomy comes from the occurrence row (kingdom..genus, specificEpithet /
GBIF's ``species``, scientificName, taxonRank, vernacularName). Pl@ntNet's GBIF datasets are read this way.

``source_record_id`` = ``"{gbifID or core id}:{media identifier URL}"``: stable when GBIF regenerates a
download in another row order; ``page_url`` = media or occurrence ``references``, else https://www.gbif.org/occurrence/{gbifID}.
Memory: the occurrence core (only the terms used) goes into a DuckDB database file in the spill space and is
looked up one batch of 8,192 media rows at a time; multimedia rows stream. Both stay flat with the archive's size.
Occurrences without a media row yield nothing (there is no image to crawl); their count is logged. A core id that
repeats, or a multimedia file without data rows, raises ``SourceError`` (naming file, row and id): a repeated id
would join its media to one occurrence by chance, and an empty extension would crawl nothing without a word.
``input_file`` of a row is ``"<archive>!<member>"``.
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
from pipeline.sources import duck_text
from pipeline.sources.base import (
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
from pipeline.sources.dwca_meta import Archive, FileSpec
from pipeline.sources.textfiles import iter_rows

log = logging.getLogger(__name__)

DWC, DC, GBIF = "http://rs.tdwg.org/dwc/terms/", "http://purl.org/dc/terms/", "http://rs.gbif.org/terms/1.0/"
OCCURRENCE = DWC + "Occurrence"
MULTIMEDIA = GBIF + "Multimedia"
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
}
MEDIA_TERMS = {
    "identifier": DC + "identifier",
    "type": DC + "type",
    "format": DC + "format",
    "references": DC + "references",
    "title": DC + "title",
    "description": DC + "description",
    "creator": DC + "creator",
    "license": DC + "license",
    "rightsHolder": DC + "rightsHolder",
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

    def __post_init__(self) -> None:
        where = f"source {self.name!r} (gbif_dwca)"
        check_taxon_filter(where, self.kingdoms, self.min_rank)
        self.kingdoms = tuple(self.kingdoms)
        self.url_rewrite = check_url_rewrite(self.url_rewrite, where)

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

    def __init__(self, archive: Archive, core: FileSpec, ctx: CrawlContext) -> None:
        self.folder = tempfile.mkdtemp(prefix="gbif-core-", dir=_spill_root(ctx))
        self.con = duck.connect(ctx.duckdb)
        self.con.execute(f"ATTACH {duck.literal(os.path.join(self.folder, 'core.duckdb'))} AS core_db")
        self.terms = list(OCCURRENCE_TERMS)
        columns = ", ".join(f"{duck_text.ident(name)} VARCHAR" for name in self.terms)
        self.con.execute(f"CREATE TABLE core_db.core (core_id VARCHAR, data_row BIGINT, line BIGINT, {columns})")
        self.con.execute("CREATE TABLE core_db.with_media (core_id VARCHAR)")
        self.label, self.location = archive.label(core.location), core.location
        self._load(archive, core)

    def _load(self, archive: Archive, core: FileSpec) -> None:
        names = ["core_id", "data_row", "line", *self.terms]
        batch: list[list] = []
        for number, line, fields in _records(archive, core):
            if len(fields) <= core.max_index:
                where = f"{self.label} row {number} (line {line})"
                raise SourceError(f"{where}: expected at least {core.max_index + 1} fields, found {len(fields)}")
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
            raise SourceError(
                f"{self.label} row {number} (line {line}), field id (column {core.id_index}): core id {core_id!r} "
                "repeats an earlier row; core ids must be unique, or media rows join an occurrence by chance"
            )

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


def _spill_root(ctx: CrawlContext) -> str:
    root = duck.spill_directory(ctx.duckdb)
    os.makedirs(root, exist_ok=True)
    return root


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


def read(config: Config, ctx: CrawlContext) -> Iterator[dict]:
    """Yield one candidate row per multimedia row of the archive (rejected rows included, with their reason)."""
    archive = Archive(config.path)
    core, media = archive.core_and_extension(OCCURRENCE, MULTIMEDIA, required_terms=[MEDIA_TERMS["identifier"]])
    occurrences = _CoreOnDisk(archive, core, ctx)
    try:
        records = _records(archive, media)
        number = 0
        while batch := list(itertools.islice(records, BATCH_ROWS)):
            core_ids = [fields[media.id_index] if len(fields) > media.id_index else "" for _, _, fields in batch]
            found = occurrences.lookup(core_ids)
            for (number, line, fields), core_id in zip(batch, core_ids, strict=True):
                yield _candidate(config, ctx, archive, core, media, number, line, fields, found.get(core_id), core_id)
        if number == 0:
            raise SourceError(
                f"{archive.label(media.location)}: no data rows (ignoreHeaderLines={media.skip_lines}); "
                "a multimedia file without rows gives no image to crawl"
            )
        without_media = occurrences.without_media()
        if without_media:
            log.info(
                "%s: %d occurrence(s) have no multimedia row (no image to crawl)", occurrences.label, without_media
            )
    finally:
        occurrences.close()


def _candidate(
    config: Config,
    ctx: CrawlContext,
    archive: Archive,
    core: FileSpec,
    media: FileSpec,
    number: int,
    line: int,
    fields: list[str],
    occurrence: dict[str, str | None] | None,
    core_id: str,
) -> dict:
    """The candidate row of one multimedia row and its occurrence (None when the core id is unknown)."""
    values = {name: media.value(fields, uri) for name, uri in MEDIA_TERMS.items()}
    record_id = (occurrence or {}).get("gbifID") or core_id
    partial: dict[str, Any] = {
        "source": config.name,
        "source_record_id": f"{record_id}:{values['identifier']}",
        "domain": "plant",
        "url": rewrite_url(values["identifier"], config.url_rewrite or {}),
        "original_text": values["title"] or values["description"],
        "input_file": archive.label(media.location),
        "input_row": number,
    }
    if len(fields) <= media.max_index:
        reject(partial, "(row)", f"line {line}: expected {media.max_index + 1} fields, found {len(fields)}")
    if occurrence is None:
        reject(partial, "coreid", f"occurrence {core_id!r} not in {core.location}")
    else:
        partial.update(_taxon(occurrence))
        gbif_id = occurrence.get("gbifID")
        partial["page_url"] = (
            values["references"]
            or occurrence.get("references")
            or (f"https://www.gbif.org/occurrence/{gbif_id}" if gbif_id else None)
        )
        apply_taxon_filter(partial, config.kingdoms, config.min_rank, "taxonRank", "kingdom")
    media_type = (values["type"] or "").strip()
    if media_type.lower() not in STILL_IMAGE and (media_type or not (values["format"] or "").startswith("image/")):
        reject(
            partial,
            "type",
            f"media type {media_type or '(empty, format ' + str(values['format']) + ')'} is not StillImage",
        )
    partial["license"] = values["license"] or (occurrence or {}).get("license")
    partial["rights_holder"] = values["rightsHolder"] or values["creator"] or (occurrence or {}).get("rightsHolder")
    return build_row(partial, ctx)
