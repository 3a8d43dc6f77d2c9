"""Merge the crawl and the download into the build's manifest: one row per candidate, with a status.

The merge is one DuckDB query over the crawl's and img2dataset's Parquet files (it scales to the
full build the same way), cast to :data:`pipeline.schema.MANIFEST_SCHEMA` and written atomically.
It then checks the invariant a user relies on: every candidate has exactly one manifest row, and
every row has a final status.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from pipeline import schema
from pipeline.config import FilterConfig
from pipeline.download import shard_results
from pipeline.filter import drop_reason_sql
from pipeline.io import read_parquets, write_parquet

MANIFEST_FILE = "manifest.parquet"


@dataclass
class Scores:
    """The embed stage's output as the merge needs it."""

    table: pa.Table  # sample_id, clip_score for every embedded row
    model: str  # the clip_model id that produced them
    thresholds: dict[str, float]  # per-domain top-fraction thresholds (already reduced)


class ManifestError(RuntimeError):
    """The merged manifest broke an invariant (lost or duplicated rows); nothing was written."""


def merge_manifest(
    candidate_files: list[Path],
    download_dir: Path,
    shard_ids: list[int],
    scores: Scores | None = None,
    rules: FilterConfig | None = None,
) -> pa.Table:
    """Candidates (crawl order) joined with each pending row's download outcome and CLIP score, then judged.

    ``keep``/``drop_reason`` come from :mod:`pipeline.filter`'s rules: the first one a row fails wins.
    """
    con = duckdb.connect()
    candidates = read_parquets(candidate_files, schema.CANDIDATE_SCHEMA)
    # An explicit row number keeps the crawl order (DuckDB scans in parallel).
    con.register("candidates", candidates.append_column("rowid_", pa.array(range(candidates.num_rows), pa.int64())))
    results = [shard_results(download_dir, i) for i in shard_ids]
    con.register("results", pa.concat_tables(results) if results else _results_schema().empty_table())
    duplicated = con.sql("SELECT sample_id, count(*) n FROM results GROUP BY 1 HAVING n > 1 LIMIT 5").fetchall()
    if duplicated:
        raise ManifestError(f"download results hold some sample_ids more than once: {duplicated}")
    candidate_cols = [f.name for f in schema.CANDIDATE_FIELDS if f.name not in ("status", "error")]
    score_table = scores.table if scores else pa.table({"sample_id": pa.array([], pa.string()),
                                                         "clip_score": pa.array([], pa.float32())})  # fmt: skip
    con.register("scores", score_table)
    clip_model = "NULL" if scores is None else "'" + scores.model.replace("'", "''") + "'"
    reason = drop_reason_sql(rules or FilterConfig(), scores.thresholds if scores else {})
    table = con.sql(
        f"""
        WITH merged AS (
            SELECT {", ".join("c." + c for c in candidate_cols)},
                CASE WHEN c.status <> '{schema.STATUS_PENDING}' THEN c.status
                     ELSE coalesce(r.status, '{schema.STATUS_FAILED_DOWNLOAD}') END AS status,
                CASE WHEN c.status <> '{schema.STATUS_PENDING}' THEN c.error
                     WHEN r.sample_id IS NULL THEN 'no result from the downloader for this row'
                     ELSE r.error END AS error,
                r.image_sha256, r.width, r.height, r.original_width, r.original_height, r.shard, r.key,
                CASE WHEN s.clip_score IS NULL THEN NULL ELSE {clip_model} END AS clip_model, s.clip_score,
                c.rowid_ AS rowid_
            FROM candidates c
            LEFT JOIN results r ON c.status = '{schema.STATUS_PENDING}' AND r.sample_id = c.sample_id
            LEFT JOIN scores s ON s.sample_id = r.sample_id
        ), judged AS (SELECT *, {reason} AS drop_reason FROM merged)
        SELECT * EXCLUDE (rowid_), drop_reason IS NULL AS keep
        FROM judged ORDER BY rowid_
        """
    ).to_arrow_table()
    table = table.select(schema.MANIFEST_SCHEMA.names).cast(schema.MANIFEST_SCHEMA)
    check_manifest(con, table)
    return table


def check_manifest(con: duckdb.DuckDBPyConnection, table: pa.Table) -> None:
    """Every candidate exactly once, every row with a final status; raise before anything is written."""
    con.register("merged", table)
    n_candidates = con.sql("SELECT count(*) FROM candidates").fetchall()[0][0]
    if table.num_rows != n_candidates:
        raise ManifestError(f"manifest has {table.num_rows} rows for {n_candidates} candidates")
    dup = con.sql("SELECT sample_id FROM merged GROUP BY 1 HAVING count(*) > 1 LIMIT 5").fetchall()
    if dup:
        raise ManifestError(f"sample_id not unique in the manifest: {[d[0] for d in dup]}")
    bad = con.sql(
        f"SELECT sample_id, status FROM merged WHERE status IS NULL OR status = '{schema.STATUS_PENDING}' "
        f"OR status NOT IN {tuple(schema.STATUSES)} LIMIT 5"
    ).fetchall()
    if bad:
        raise ManifestError(f"rows without a final status: {bad}")


def write_manifest(table: pa.Table, build_dir: Path) -> Path:
    path = build_dir / MANIFEST_FILE
    write_parquet(table, path)
    return path


def _results_schema() -> pa.Schema:
    fields = {f.name: f for f in schema.MANIFEST_SCHEMA}
    names = ["sample_id", "status", "error", "image_sha256", "width", "height"]
    names += ["original_width", "original_height", "shard", "key"]
    return pa.schema([fields[n] for n in names])
