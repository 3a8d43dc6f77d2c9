"""The iNaturalist adapter as it was before DuckDB: one Python dict per table row. The parity tests' oracle.

Kept verbatim (row for row the behaviour ``pipeline.sources.inaturalist`` must reproduce), but for this docstring.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.core.io import is_local, isfile, join
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
from pipeline.sources.textfiles import read_table

SIZES = ("square", "small", "medium", "large", "original")
PHOTO_COLUMNS = ("photo_uuid", "photo_id", "observation_uuid", "observer_id", "extension", "license")
OBSERVATION_COLUMNS = ("observation_uuid", "observer_id", "taxon_id", "quality_grade")
TAXA_COLUMNS = ("taxon_id", "ancestry", "rank_level", "rank", "name", "active")
OBSERVER_COLUMNS = ("observer_id", "login", "name")


@dataclass
class Config:
    directory: str  # folder holding photos/observations/taxa/observers .csv or .csv.gz; local or an fsspec URL
    name: str = "inaturalist"  # registry name written to the `source` column
    common_names: str | None = None  # optional CSV taxon_id,common_name; relative paths are inside `directory`
    base_url: str = "https://inaturalist-open-data.s3.amazonaws.com"  # bucket or mirror serving photos/<id>/<size>
    size: str = "medium"  # square | small | medium | large | original
    quality_grades: tuple[str, ...] = ("research",)  # accepted observations.quality_grade; empty = all
    min_rank: str | None = "species"  # reject identifications coarser than this rank; None = any rank
    kingdoms: tuple[str, ...] = ("Plantae",)  # accepted kingdoms; empty = all
    url_rewrite: dict[str, str] | None = None  # URL prefix -> replacement, for mirrors / offline samples

    def __post_init__(self) -> None:
        where = f"source {self.name!r} (inaturalist)"
        if self.size not in SIZES:
            raise ConfigError(f"{where}: size {self.size!r} unknown; expected one of {', '.join(SIZES)}")
        if isinstance(self.quality_grades, str):
            raise ConfigError(f"{where}: quality_grades must be a list, e.g. [research]")
        self.quality_grades = tuple(self.quality_grades)
        check_taxon_filter(where, self.kingdoms, self.min_rank)
        self.kingdoms = tuple(self.kingdoms)
        self.url_rewrite = check_url_rewrite(self.url_rewrite, where)
        self.base_url = self.base_url.rstrip("/")

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> Config:
        return config_from_dict(cls, options, "inaturalist options")


def _inside(directory: str, name: str) -> str:
    """``name`` in the export folder (a local folder as pathlib spells it, or a URL); a full URL is kept."""
    if "://" in name:
        return name
    return str(Path(directory) / name) if is_local(directory) else join(directory.rstrip("/"), name)


def _table(directory: str, stem: str) -> str:
    for candidate in (_inside(directory, f"{stem}.csv"), _inside(directory, f"{stem}.csv.gz")):
        if isfile(candidate):
            return candidate
    raise SourceError(f"{_folder(directory)}: missing {stem}.csv (or {stem}.csv.gz) of the iNaturalist export")


def _folder(directory: str) -> str:
    """The folder as error messages name it (pathlib's spelling for a local one, as before)."""
    return str(Path(directory)) if is_local(directory) else directory


def _lookup(path: str, key: str, columns: tuple[str, ...], delimiter: str = "\t", quote: str | None = None) -> dict:
    """Small table -> {key: values}; a malformed row here would corrupt every photo that joins to it, so it fails.

    So does a repeated key: which of two taxa (or observations) a photo joins to would depend on row order.
    """
    table: dict[str, dict[str, str | None]] = {}
    for record in read_table(path, required=columns, delimiter=delimiter, quotechar=quote):
        where = f"{path} row {record.row} (line {record.line})"
        if record.problem:
            raise SourceError(f"{where}: {record.problem}")
        value = record.values[key] or ""
        if value in table:
            raise SourceError(f"{where}, field {key}: id {value!r} repeats an earlier row; {key} must be unique")
        table[value] = {c: record.values[c] for c in columns}
    return table


class _Taxonomy:
    """Resolves a taxon id to (name, rank, taxonomy dict) through ``ancestry``, memoised per taxon."""

    def __init__(self, taxa: dict[str, dict[str, str | None]]) -> None:
        self.taxa, self.cache = taxa, {}

    def resolve(self, taxon_id: str) -> tuple[str | None, str | None, dict[str, str]] | None:
        if taxon_id not in self.taxa:
            return None
        if taxon_id not in self.cache:
            taxon = self.taxa[taxon_id]
            chain = [t for t in (taxon["ancestry"] or "").split("/") if t] + [taxon_id]
            ranks: dict[str, str] = {}
            for node_id in chain:
                node = self.taxa.get(node_id)
                if node and node["rank"] in TAXONOMY_RANKS and node["name"]:
                    ranks[node["rank"]] = node["name"]
            self.cache[taxon_id] = (taxon["name"], taxon["rank"], ranks)
        return self.cache[taxon_id]


def read(config: Config, ctx: CrawlContext) -> Iterator[dict]:
    """Yield one candidate row per ``photos.csv`` row (rejected rows included, with their reason)."""
    directory = config.directory
    photos_path = _table(directory, "photos")
    observations = _lookup(_table(directory, "observations"), "observation_uuid", OBSERVATION_COLUMNS)
    taxonomy = _Taxonomy(_lookup(_table(directory, "taxa"), "taxon_id", TAXA_COLUMNS))
    observers = _lookup(_table(directory, "observers"), "observer_id", OBSERVER_COLUMNS)
    common: dict[str, dict] = {}
    if config.common_names:
        path = _inside(directory, config.common_names)
        common = _lookup(path, "taxon_id", ("taxon_id", "common_name"), delimiter=",", quote='"')

    for record in read_table(photos_path, required=PHOTO_COLUMNS):
        photo = record.values
        photo_id, observation_uuid = photo["photo_id"] or "", photo["observation_uuid"] or ""
        partial: dict[str, Any] = {
            "source": config.name,
            "source_record_id": f"{photo_id}:{observation_uuid}" if photo_id else None,
            "domain": "plant",
            "page_url": f"https://www.inaturalist.org/photos/{photo_id}" if photo_id else None,
            "license": photo["license"],
            "input_file": photos_path,
            "input_row": record.row,
        }
        if photo_id and photo["extension"]:
            url = f"{config.base_url}/photos/{photo_id}/{config.size}.{photo['extension']}"
            partial["url"] = rewrite_url(url, config.url_rewrite or {})
        if record.problem:
            reject(partial, "(row)", f"line {record.line}: {record.problem}")
        elif not photo_id or not photo["extension"]:
            reject(partial, "photo_id" if not photo_id else "extension", "empty; cannot build the image URL")
        observer = observers.get(photo["observer_id"] or "")
        if observer:
            partial["rights_holder"] = observer["name"] or observer["login"]
        else:
            reject(partial, "observer_id", f"observer {photo['observer_id']!r} not in observers.csv (no attribution)")
        observation = observations.get(observation_uuid)
        if observation is None:
            reject(partial, "observation_uuid", f"observation {observation_uuid!r} not in observations.csv")
            yield build_row(partial, ctx)
            continue
        taxon_id = observation["taxon_id"] or ""
        resolved = taxonomy.resolve(taxon_id)
        if resolved is None:
            reject(partial, "observations.taxon_id", f"taxon {taxon_id!r} not in taxa.csv (unidentified observation)")
        else:
            name, rank, ranks = resolved
            partial.update(scientific_name=name, taxon_rank=rank, taxonomy=ranks)
            partial["common_name"] = (common.get(taxon_id) or {}).get("common_name") or None
        if resolved is not None:  # kingdom first: "not a plant" is the most telling reason
            apply_taxon_filter(partial, config.kingdoms, config.min_rank, "taxa.rank", "taxa.ancestry")
        grade = observation["quality_grade"]
        if config.quality_grades and grade not in config.quality_grades:
            reject(
                partial,
                "observations.quality_grade",
                f"quality grade {grade or '(empty)'} not in [{', '.join(config.quality_grades)}]",
            )
        yield build_row(partial, ctx)
