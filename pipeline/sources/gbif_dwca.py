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
Memory: the occurrence core is held in a dict (only the terms used); multimedia rows stream.
Occurrences without a media row yield nothing (there is no image to crawl); their count is logged. A core id that
repeats, or a multimedia file without data rows, raises ``SourceError`` (naming file, row and id): a repeated id
would join its media to one occurrence by chance, and an empty extension would crawl nothing without a word.
``input_file`` of a row is ``"<archive>!<member>"``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pipeline.core.schema import TAXONOMY_RANKS
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


def _load_occurrences(archive: Archive, core: FileSpec) -> dict[str, dict[str, str | None]]:
    occurrences = {}
    for number, line, fields in _records(archive, core):
        where = f"{archive.label(core.location)} row {number} (line {line})"
        if len(fields) <= core.max_index:
            raise SourceError(f"{where}: expected at least {core.max_index + 1} fields, found {len(fields)}")
        core_id = fields[core.id_index]
        if core_id in occurrences:
            raise SourceError(
                f"{where}, field id (column {core.id_index}): core id {core_id!r} repeats an earlier row; "
                "core ids must be unique, or media rows join an occurrence by chance"
            )
        occurrences[core_id] = {name: core.value(fields, uri) for name, uri in OCCURRENCE_TERMS.items()}
    return occurrences


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
    occurrences = _load_occurrences(archive, core)
    media_label = archive.label(media.location)
    with_media: set[str] = set()
    number = 0
    for number, line, fields in _records(archive, media):
        values = {name: media.value(fields, uri) for name, uri in MEDIA_TERMS.items()}
        core_id = fields[media.id_index] if len(fields) > media.id_index else ""
        with_media.add(core_id)
        occurrence = occurrences.get(core_id)
        record_id = (occurrence or {}).get("gbifID") or core_id
        partial: dict[str, Any] = {
            "source": config.name,
            "source_record_id": f"{record_id}:{values['identifier']}",
            "domain": "plant",
            "url": rewrite_url(values["identifier"], config.url_rewrite or {}),
            "original_text": values["title"] or values["description"],
            "input_file": media_label,
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
        yield build_row(partial, ctx)
    if number == 0:
        raise SourceError(
            f"{media_label}: no data rows (ignoreHeaderLines={media.skip_lines}); "
            "a multimedia file without rows gives no image to crawl"
        )
    without_media = len(set(occurrences) - with_media)
    if without_media:
        log.info(
            "%s: %d occurrence(s) have no multimedia row (no image to crawl)",
            archive.label(core.location),
            without_media,
        )
