"""Which rows a dedup stage considers, and their keep rank (the documented keep rule), as DuckDB SQL.

Every dedup method clusters the rows that downloaded (``status = 'ok'``) and picks the best-ranked member of a
cluster as its representative: plant domain first, then the more open license, then the larger original image,
then the smallest ``sample_id`` (:data:`pipeline.stages.dedup.clusters.KEEP_RULE`). Rows an earlier dedup stage
already dropped are left out of later stages, so every dropped row points at a row that dedup keeps.
"""

from __future__ import annotations

import duckdb

from pipeline.core.duck import file_list, literal
from pipeline.core.harness import Build, planned_units, read_marker

# Lower is more open; checked top to bottom (nc-nd before nc, nc-sa before nc, ...).
LICENSE_RANK_SQL = """CASE
    WHEN license LIKE 'cc0%' OR license LIKE 'pdm%' THEN 0
    WHEN license LIKE 'cc-by-nc-nd%' THEN 6
    WHEN license LIKE 'cc-by-nc-sa%' THEN 4
    WHEN license LIKE 'cc-by-nc%' THEN 3
    WHEN license LIKE 'cc-by-nd%' THEN 5
    WHEN license LIKE 'cc-by-sa%' THEN 2
    WHEN license LIKE 'cc-by%' THEN 1
    ELSE 7 END"""


def define_downloaded(con: duckdb.DuckDBPyConnection, build: Build) -> None:
    """View ``downloaded``: every row with status ok, with url, domain, license, caption, sha256, pixels, ``rank``."""
    layout = build.layout
    crawl = [layout.crawl_file(s.name) for s in build.recipe.sources]
    shards = planned_units(layout.stage_dir("download"))
    if not shards:
        text = ("sample_id", "url", "domain", "license", "caption", "caption_kind", "image_sha256")
        columns = ", ".join([*(f"NULL::VARCHAR AS {c}" for c in text), "NULL::BIGINT AS pixels", "NULL::BIGINT rank"])
        con.execute(f"CREATE OR REPLACE TEMP VIEW downloaded AS SELECT {columns} WHERE false")
        return
    downloads = layout.stage_files("download", shards)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP VIEW downloaded AS
        SELECT *, row_number() OVER (
                   ORDER BY domain <> 'plant', license_rank, pixels DESC NULLS LAST, sample_id) AS rank
        FROM (
            SELECT c.sample_id, c.url, c.domain, c.license, c.caption, c.caption_kind, d.image_sha256,
                   d.original_width::BIGINT * d.original_height::BIGINT AS pixels, {LICENSE_RANK_SQL} AS license_rank
            FROM read_parquet({file_list(crawl)}) c
            JOIN read_parquet({file_list(downloads)}) d USING (sample_id)
            WHERE d.status = 'ok'
        )
        """
    )


def dropped_by(con: duckdb.DuckDBPyConnection, build: Build, stage: str, column: str, where: str = "true") -> str:
    """SQL for the sample_ids an earlier dedup stage dropped (its reduce output), or an empty set."""
    record = read_marker(build.layout.stage_dir(stage), "_reduce")
    if record is None or not (record.get("stats") or {}).get("file"):
        return "SELECT NULL::VARCHAR AS sample_id WHERE false"
    path = build.layout.unit_file(stage, record["stats"]["file"], "")
    return f"SELECT sample_id FROM read_parquet({literal(path)}) WHERE {column} IS NOT NULL AND {where}"
