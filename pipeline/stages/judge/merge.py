"""The streaming merge: every stage's per-unit Parquet joined on ``sample_id``, judged, written by DuckDB.

One query joins the candidates (crawl order) with each pending row's download outcome and CLIP score, names the
first rule each row fails and ``COPY``s the result to Parquet: DuckDB streams and spills, so the driver's memory
does not grow with the row count and no row becomes a Python object. Before the file is published the invariants
a user relies on are checked in SQL on the written file: every candidate exactly once, every row with a final
status.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa

from pipeline.core import schema
from pipeline.core.duck import file_list, literal
from pipeline.core.rules import Rule, drop_reason_sql

DOWNLOAD_COLUMNS = ["status", "error", *(f.name for f in schema.DOWNLOAD_FIELDS)]


@dataclass(frozen=True)
class StageColumns:
    """One upstream stage's contribution: its Parquet files of ``sample_id`` + ``columns``."""

    name: str
    files: list[str]
    columns: tuple[str, ...]


class ManifestError(RuntimeError):
    """The merged manifest broke an invariant (lost or duplicated rows); nothing was published."""


def define_merged(
    con: duckdb.DuckDBPyConnection, crawl_files: list[str], download_files: list[str], stages: list[StageColumns]
) -> None:
    """Views ``candidates`` (crawl order kept in ``order_``), ``downloads`` and ``merged``: every candidate with its
    download outcome and each stage's columns (NULL where a stage is off or has no row for it)."""
    parts = [
        f"SELECT *, {i}::BIGINT * 4294967296 + file_row_number AS order_ "
        f"FROM read_parquet({literal(path)}, file_row_number = true)"
        for i, path in enumerate(crawl_files)
    ]
    con.execute(f"CREATE OR REPLACE TEMP VIEW candidates AS {' UNION ALL '.join(parts)}")
    _view(con, "downloads", download_files, ["sample_id", *DOWNLOAD_COLUMNS])
    filled = {c: "c." + c for c in (f.name for f in schema.CANDIDATE_FIELDS) if c not in ("status", "error")}
    filled |= {f.name: "d." + f.name for f in schema.DOWNLOAD_FIELDS}
    joins = []
    for i, stage in enumerate(s for s in stages if s.files):
        _view(con, f"stage_{i}", stage.files, ["sample_id", *stage.columns])
        joins.append(f"LEFT JOIN stage_{i} s{i} ON s{i}.sample_id = c.sample_id")
        filled |= {column: f"s{i}.{column}" for column in stage.columns}
    pending, failed = literal(schema.STATUS_PENDING), literal(schema.STATUS_FAILED_DOWNLOAD)
    no_result = literal("no result from the downloader for this row")
    columns = [  # a row the crawl rejected keeps its status; a pending row takes the download's
        f"CASE WHEN c.status <> {pending} THEN c.status ELSE coalesce(d.status, {failed}) END AS status",
        f"CASE WHEN c.status <> {pending} THEN c.error WHEN d.sample_id IS NULL THEN {no_result} "
        "ELSE d.error END AS error",
    ]
    for field in schema.MANIFEST_SCHEMA:
        if field.name not in ("status", "error", "keep", "drop_reason"):
            columns.append(f"CAST({filled.get(field.name, 'NULL')} AS {_duck_type(field.type)}) AS {field.name}")
    con.execute(
        f"""
        CREATE OR REPLACE TEMP VIEW merged AS
        SELECT {", ".join(columns)}, c.order_
        FROM candidates c
        LEFT JOIN downloads d ON c.status = {pending} AND d.sample_id = c.sample_id
        {" ".join(joins)}
        """
    )


def _view(con, name: str, files: list[str], columns: list[str]) -> None:
    if files:
        select = f"SELECT {', '.join(columns)} FROM read_parquet({file_list(files)})"
    else:
        fields = {f.name: f for f in schema.MANIFEST_SCHEMA}
        select = "SELECT " + ", ".join(f"NULL::{_duck_type(fields[c].type)} AS {c}" for c in columns) + " WHERE false"
    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {select}")


def write_manifest(
    con: duckdb.DuckDBPyConnection, rules: list[Rule], out: Path, metadata: dict[str, str] | None = None
) -> Path:
    """Judge every merged row and ``COPY`` the manifest to ``out`` in crawl order; check it before returning.

    ``metadata`` goes into the Parquet footer (``plantmix_code_version``, ...), readable by any Parquet reader.
    """
    repeated = con.sql("SELECT sample_id FROM downloads GROUP BY 1 HAVING count(*) > 1 LIMIT 5").fetchall()
    if repeated:
        raise ManifestError(f"download results hold some sample_ids more than once: {[r[0] for r in repeated]}")
    names = ", ".join(n if n != "duplicate_of" else "r.duplicate_of" for n in schema.MANIFEST_SCHEMA.names)
    con.execute(f"CREATE OR REPLACE TEMP VIEW judged AS SELECT *, {drop_reason_sql(rules)} AS drop_reason FROM merged")
    con.execute(
        f"""
        COPY (
            SELECT {names} FROM (SELECT * EXCLUDE (duplicate_of), drop_reason IS NULL AS keep FROM judged) j
            LEFT JOIN ({resolved_duplicates_sql()}) r USING (sample_id)
            ORDER BY order_
        ) TO {literal(out)} (FORMAT parquet, COMPRESSION zstd{_kv_metadata(metadata or {})})
        """
    )
    check_manifest(con, out)
    return out


# The pointer a dedup drop carries: the row it duplicates by the method that dropped it. The same precedence as
# the rules (contamination first, then exact, caption, image); dedup columns exist only for downloaded rows, so
# this reads the small dedup columns, not every rule's inputs.
POINTER_SQL = """CASE WHEN contaminates IS NOT NULL THEN NULL WHEN exact_dup_of IS NOT NULL THEN exact_dup_of
    WHEN text_cluster <> sample_id THEN text_cluster WHEN image_cluster <> sample_id THEN image_cluster END"""
MAX_HOPS = 4  # exact -> caption -> image: a chain is at most three pointers long


def resolved_duplicates_sql() -> str:
    """``sample_id, duplicate_of`` for every dedup-dropped row: its pointer followed through rows that a later
    dedup stage dropped in turn (O exact-duplicated by E, then O caption-duplicate of C: E's group is C's), so it
    names the row that dedup keeps for the group. Only the dropped duplicates take part (a small table)."""
    hops = ["SELECT sample_id, pointer AS hop FROM pointers"]
    for _ in range(MAX_HOPS - 1):
        hops = [f"SELECT h.sample_id, coalesce(p.pointer, h.hop) AS hop FROM ({hops[0]}) h "
                "LEFT JOIN pointers p ON p.sample_id = h.hop"]  # fmt: skip
    return f"""
        WITH pointers AS (SELECT sample_id, {POINTER_SQL} AS pointer FROM merged WHERE {POINTER_SQL} IS NOT NULL)
        SELECT sample_id, hop AS duplicate_of FROM ({hops[0]})
    """


def _kv_metadata(metadata: dict[str, str]) -> str:
    if not metadata:
        return ""
    return ", KV_METADATA {" + ", ".join(f"{key}: {literal(value)}" for key, value in metadata.items()) + "}"


def check_manifest(con: duckdb.DuckDBPyConnection, manifest: Path) -> None:
    """Every candidate exactly once, every row with a final status; raise before anything is published."""
    written = f"read_parquet({literal(manifest)})"
    n_candidates = con.sql("SELECT count(*) FROM candidates").fetchall()[0][0]
    n_rows = con.sql(f"SELECT count(*) FROM {written}").fetchall()[0][0]
    if n_rows != n_candidates:
        raise ManifestError(f"manifest has {n_rows} rows for {n_candidates} candidates")
    dup = con.sql(f"SELECT sample_id FROM {written} GROUP BY 1 HAVING count(*) > 1 LIMIT 5").fetchall()
    if dup:
        raise ManifestError(f"sample_id not unique in the manifest: {[d[0] for d in dup]}")
    final = ", ".join(literal(s) for s in schema.STATUSES if s != schema.STATUS_PENDING)
    bad = con.sql(f"SELECT sample_id, status FROM {written} WHERE status IS NULL OR status NOT IN ({final}) LIMIT 5")
    bad = bad.fetchall()
    if bad:
        raise ManifestError(f"rows without a final status: {bad}")


def _duck_type(arrow_type: pa.DataType) -> str:
    if pa.types.is_string(arrow_type):
        return "VARCHAR"
    if pa.types.is_int32(arrow_type):
        return "INTEGER"
    if pa.types.is_int64(arrow_type):
        return "BIGINT"
    if pa.types.is_float32(arrow_type):
        return "FLOAT"
    if pa.types.is_boolean(arrow_type):
        return "BOOLEAN"
    if pa.types.is_map(arrow_type):
        return f"MAP({_duck_type(arrow_type.key_type)}, {_duck_type(arrow_type.item_type)})"
    if pa.types.is_struct(arrow_type):
        return "STRUCT(" + ", ".join(f'"{f.name}" {_duck_type(f.type)}' for f in arrow_type) + ")"
    raise TypeError(f"no DuckDB type for {arrow_type}")
