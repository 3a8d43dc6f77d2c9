"""The iNaturalist adapter as it was before DuckDB: one Python dict per table row. The parity tests' oracle.

Its per-row logic is kept verbatim (row for row the behaviour ``pipeline.sources.inaturalist`` must reproduce);
the configuration, file lookup and lookup-table reading are the adapter's own, imported.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pipeline.core.schema import TAXONOMY_RANKS
from pipeline.sources.base import CrawlContext, apply_taxon_filter, build_row, reject, rewrite_url
from pipeline.sources.inat_observations import REQUIRED as OBSERVATION_COLUMNS
from pipeline.sources.inaturalist import (  # the file handling both share; the row logic below is the old one's
    OBSERVER_COLUMNS,
    PHOTO_COLUMNS,
    TAXA_COLUMNS,
    Config,
    _inside,
    _lookup,
    _table,
)
from pipeline.sources.textfiles import read_table


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
