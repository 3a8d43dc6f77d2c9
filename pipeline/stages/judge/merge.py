"""The merge: every stage's Parquet joined on ``sample_id``, judged and written as the manifest, group by group.

Download shards are consecutive runs of the crawl's pending rows (the plan cuts them in crawl order), so a run of
shards and the crawl rows from its first row up to the next run's first row (the rows the crawl rejected there
included) form a *group*: its candidates, its download rows and its per-shard stage rows (embed, decontaminate:
files named after the shard) join among themselves. DuckDB joins, judges and sorts one group at a time, in memory
bounded by the group's size, and the groups are streamed one after another into one Parquet file; so the
driver's memory stays flat however large the build, and no row becomes a Python object.

What needs the whole build is computed once as small tables: the rows of stages that write one file for the
build (the dedup stages' clusters) beside each dropped duplicate's pointer followed across the build, sorted in
crawl order so that a group reads only its range; and, by the judge, the top-fraction thresholds over the
scores every group contributes (:meth:`GroupedMerge.gather`). Before the file is published the invariants a user
relies on are checked in SQL on the written file: every candidate exactly once, every row with a final status.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import schema
from pipeline.core.duck import file_list, literal
from pipeline.core.io import exists
from pipeline.core.rules import Rule, drop_reason_sql

DOWNLOAD_COLUMNS = ["status", "error", *(f.name for f in schema.DOWNLOAD_FIELDS)]
# Candidates per group, about (shards are whole): one group's joins and sort are what the merge holds at a time.
GROUP_ROWS = 100_000
ROW_GROUP_ROWS = 122_880  # manifest rows per Parquet row group (DuckDB's own default)
UNIQUE_CHECK_ROWS = 2_000_000  # ids the uniqueness check hashes at a time (~250 MB; a pass over the file each)
FILE_STRIDE = 4_294_967_296  # order_ = crawl file index * FILE_STRIDE + row number in that file


@dataclass(frozen=True)
class StageColumns:
    """One upstream stage's contribution: its Parquet files of ``sample_id`` + ``columns``."""

    name: str
    files: list[str]
    columns: tuple[str, ...]


@dataclass(frozen=True)
class MergeInputs:
    """What the judge merges: the crawl files in crawl order, the download shards in plan order with their plan
    and result files, and each upstream stage's columns."""

    crawl_files: list[str]
    shards: list[str]
    plan_files: list[str]
    download_files: list[str]
    stages: list[StageColumns]


@dataclass(frozen=True)
class Group:
    """Consecutive download shards (indexes into the plan) and the crawl rows they were planned from: ``order_``
    in ``[start, stop)``, rejected rows included; ``stop`` None runs to the end of the crawl."""

    shards: range
    start: int
    stop: int | None


class ManifestError(RuntimeError):
    """The merged manifest broke an invariant (lost or duplicated rows); nothing was published."""


def shards_per_group(shard_size: int) -> int:
    """Whole shards of ``shard_size`` planned rows per group: about ``GROUP_ROWS`` rows, at least one shard."""
    return max(1, GROUP_ROWS // max(shard_size, 1))


class GroupedMerge:
    """The merge of one build: its groups, the build-wide rows, and the views of one group at a time.

    ``define(group)`` (re)creates the views ``group_candidates``, ``downloads`` and ``merged`` for that group; the
    view ``candidates`` always holds the whole crawl (for lookups and the final check).
    """

    def __init__(self, con: duckdb.DuckDBPyConnection, inputs: MergeInputs, scratch: Path, group_shards: int) -> None:
        self.con, self.inputs, self.scratch = con, inputs, scratch
        con.execute(f"CREATE OR REPLACE TEMP VIEW candidates AS {crawl_range_sql(inputs.crawl_files, 0, None)}")
        self.groups = plan_groups(con, inputs, group_shards)
        stages = [s for s in inputs.stages if s.files]
        by_shard = [(stage, shard_files(stage, inputs.shards)) for stage in stages]
        self.per_shard = [(stage, files) for stage, files in by_shard if files is not None]
        build_wide = [stage for stage, files in by_shard if files is None]
        self.build_rows = scratch / "build_rows.parquet"
        self.build_columns = write_build_rows(con, stages, build_wide, self.build_rows)

    def define(self, group: Group) -> None:
        """Point the views at one group's files only: its crawl range, its shards' download and per-shard stage
        files, its range of the build-wide rows; so DuckDB's joins hold one group at a time."""
        con, inputs = self.con, self.inputs
        crawl = crawl_range_sql(inputs.crawl_files, group.start, group.stop)
        con.execute(f"CREATE OR REPLACE TEMP VIEW group_candidates AS {crawl}")
        downloads = [inputs.download_files[k] for k in group.shards]
        missing = [path for path in downloads if not exists(path)]
        if missing:
            raise ManifestError(f"download results missing for planned shards: {missing[:5]} ({len(missing)} "
                                "file(s)); run the download stage for them again")  # fmt: skip
        _view(con, "downloads", downloads, ["sample_id", *DOWNLOAD_COLUMNS])
        joins, filled = [], {}
        for i, (stage, files) in enumerate(self.per_shard):
            _view(con, f"stage_{i}", [f for k in group.shards if (f := files[k])], ["sample_id", *stage.columns])
            joins.append(f"LEFT JOIN stage_{i} s{i} ON s{i}.sample_id = c.sample_id")
            filled |= {column: f"s{i}.{column}" for column in stage.columns}
        if self.build_columns:
            upper = f" AND order_ < {group.stop}" if group.stop is not None else ""
            rows = f"SELECT * EXCLUDE (order_) FROM read_parquet({literal(self.build_rows)})"
            con.execute(f"CREATE OR REPLACE TEMP VIEW build_rows AS {rows} WHERE order_ >= {group.start}{upper}")
            joins.append("LEFT JOIN build_rows b ON b.sample_id = c.sample_id")
            filled |= {column: f"b.{column}" for column in self.build_columns}
        con.execute(f"CREATE OR REPLACE TEMP VIEW merged AS {merged_sql(joins, filled)}")

    def gather(self, sql: str, name: str) -> str:
        """``sql`` over each group's ``merged`` rows, written group by group to scratch Parquet; returns a relation
        over the whole build (the scores the top-fraction thresholds rank)."""
        folder = self.scratch / name
        folder.mkdir()
        for k, group in enumerate(self.groups):
            self.define(group)
            self.con.execute(f"COPY ({sql}) TO {literal(folder / f'{k:05d}.parquet')} (FORMAT parquet)")
        return f"SELECT * FROM read_parquet({literal(folder / '*.parquet')})"


def crawl_range_sql(crawl_files: list[str], start: int, stop: int | None) -> str:
    """The crawl rows with ``order_`` in ``[start, stop)``, each with its ``order_``; the bounds are put on each
    file's row number, so DuckDB reads only the row groups in range."""
    parts = []
    for i, path in enumerate(crawl_files):
        first, end = i * FILE_STRIDE, (i + 1) * FILE_STRIDE
        if start >= end or (stop is not None and stop <= first):
            continue
        bounds = [f"file_row_number >= {start - first}"] if start > first else []
        bounds += [f"file_row_number < {stop - first}"] if stop is not None and stop < end else []
        where = f" WHERE {' AND '.join(bounds)}" if bounds else ""
        parts.append(
            f"SELECT *, {first}::BIGINT + file_row_number AS order_ "
            f"FROM read_parquet({literal(path)}, file_row_number = true){where}"
        )
    return " UNION ALL ".join(parts)


def plan_groups(con: duckdb.DuckDBPyConnection, inputs: MergeInputs, group_shards: int) -> list[Group]:
    """Groups of ``group_shards`` consecutive shards; each starts at its first shard's first crawl row (the first
    group at the crawl's first row, so rejected rows before any shard are in it) and ends where the next starts."""
    n = len(inputs.shards)
    firsts = list(range(group_shards, n, group_shards))
    starts = [0, *first_row_orders(con, [inputs.plan_files[k] for k in firsts])]
    bounds = [0, *firsts, n]
    stops = [*starts[1:], None]
    return [Group(range(bounds[k], bounds[k + 1]), starts[k], stops[k]) for k in range(len(starts))]


def first_row_orders(con: duckdb.DuckDBPyConnection, plan_files: list[str]) -> list[int]:
    """The crawl position (``order_``) of each plan file's first row, checked to be a pending row and increasing:
    the plan cut the crawl's pending rows in crawl order, or the groups would not hold their own rows."""
    if not plan_files:
        return []
    firsts = " UNION ALL ".join(
        f"SELECT {k} AS k, sample_id FROM read_parquet({literal(p)}, file_row_number = true) WHERE file_row_number = 0"
        for k, p in enumerate(plan_files)
    )
    rows = con.sql(  # the semi-join hashes the few first ids, not the crawl
        f"""WITH f AS MATERIALIZED ({firsts})
            SELECT f.k, c.order_, c.status FROM f LEFT JOIN (SELECT sample_id, order_, status FROM candidates
                WHERE sample_id IN (SELECT sample_id FROM f)) c USING (sample_id) ORDER BY f.k"""
    ).fetchall()
    orders = [order for _, order, status in rows if status == schema.STATUS_PENDING]
    if len(rows) != len(plan_files) or len(orders) != len(rows) or orders != sorted(set(orders)):
        bad = [plan_files[k] for k, order, status in rows if status != schema.STATUS_PENDING or order is None]
        raise ManifestError(
            f"the download plan does not cut the crawl's pending rows in crawl order (first rows of {bad[:3]} "
            "are not pending crawl rows, or occur more than once or out of order); plan the download again"
        )
    return orders


def shard_files(stage: StageColumns, shards: list[str]) -> list[str | None] | None:
    """The stage's file for each download shard when its files are named after the shards (``<shard>.parquet``,
    each holding that shard's rows), else None: its files hold rows of the whole build."""
    by_name = {path.rsplit("/", 1)[-1]: path for path in stage.files}
    names = [f"{shard}.parquet" for shard in shards]
    if not by_name.keys() <= set(names):
        return None
    return [by_name.get(name) for name in names]


# The pointer a dedup drop carries: the row it duplicates by the method that dropped it. The same precedence as
# the rules (contamination first, then exact, caption, image); dedup columns exist only for downloaded rows, so
# this reads the small dedup columns, not every rule's inputs.
POINTER_SQL = """CASE WHEN contaminates IS NOT NULL THEN NULL WHEN exact_dup_of IS NOT NULL THEN exact_dup_of
    WHEN text_cluster <> sample_id THEN text_cluster WHEN image_cluster <> sample_id THEN image_cluster END"""
POINTER_COLUMNS = ("contaminates", "exact_dup_of", "text_cluster", "image_cluster")  # what POINTER_SQL reads
MAX_HOPS = 4  # exact -> caption -> image: a chain is at most three pointers long


def write_build_rows(
    con: duckdb.DuckDBPyConnection, stages: list[StageColumns], build_wide: list[StageColumns], path: Path
) -> list[str]:
    """Write, sorted by ``order_``, every row that a build-wide stage file holds or that has a resolved
    ``duplicate_of``: ``order_, sample_id``, those stages' columns and ``duplicate_of``. Returns the columns (none
    when there are no such rows to join, and then no file)."""
    pointing = [s for s in stages if set(s.columns) & set(POINTER_COLUMNS)]
    if not build_wide and not pointing:
        return []
    for i, stage in enumerate(stages):
        _view(con, f"build_stage_{i}", stage.files, ["sample_id", *stage.columns])
    view = {id(stage): f"build_stage_{i}" for i, stage in enumerate(stages)}
    keys = [f"SELECT sample_id FROM {view[id(s)]}" for s in build_wide] + ["SELECT sample_id FROM resolved"]
    joins, filled = [], {}
    for j, stage in enumerate(build_wide):
        joins.append(f"LEFT JOIN {view[id(stage)]} w{j} ON w{j}.sample_id = k.sample_id")
        filled |= {column: f"w{j}.{column}" for column in stage.columns}
    columns = [*filled, "duplicate_of"]
    selected = ", ".join([*filled.values(), "r.duplicate_of"])
    pointers = pointers_sql([(view[id(s)], s) for s in pointing])
    con.execute(
        f"""
        COPY (
            WITH resolved AS MATERIALIZED ({resolved_duplicates_sql(pointers)})
            SELECT c.order_, k.sample_id, {selected}
            FROM ({" UNION ".join(keys)}) k
            JOIN (SELECT sample_id, order_ FROM candidates) c ON c.sample_id = k.sample_id
            {" ".join(joins)}
            LEFT JOIN resolved r ON r.sample_id = k.sample_id
            ORDER BY c.order_
        ) TO {literal(path)} (FORMAT parquet, ROW_GROUP_SIZE 16384)
        """
    )
    return columns


def pointers_sql(pointing: list[tuple[str, StageColumns]]) -> str:
    """``sample_id, pointer`` for every row with a dedup pointer, from the (small) views of the stages that add
    pointer columns; a column no stage adds is NULL."""
    if not pointing:
        return "SELECT NULL::VARCHAR AS sample_id, NULL::VARCHAR AS pointer WHERE false"
    keys = " UNION ".join(f"SELECT sample_id FROM {view}" for view, _ in pointing)
    joins, filled = [], {}
    for j, (view, stage) in enumerate(pointing):
        joins.append(f"LEFT JOIN {view} p{j} ON p{j}.sample_id = k.sample_id")
        filled |= {column: f"p{j}.{column}" for column in stage.columns if column in POINTER_COLUMNS}
    columns = ", ".join(f"{filled.get(c, 'NULL::VARCHAR')} AS {c}" for c in POINTER_COLUMNS)
    rows = f"SELECT k.sample_id, {columns} FROM ({keys}) k {' '.join(joins)}"
    return f"SELECT sample_id, {POINTER_SQL} AS pointer FROM ({rows}) WHERE {POINTER_SQL} IS NOT NULL"


def resolved_duplicates_sql(pointers: str) -> str:
    """``sample_id, duplicate_of`` for every dedup-dropped row: its pointer followed through rows that a later
    dedup stage dropped in turn (O exact-duplicated by E, then O caption-duplicate of C: E's group is C's), so it
    names the row that dedup keeps for the group. ``pointers`` (``sample_id, pointer``) covers the whole build, as
    a pointer may lead into another group; only the dropped duplicates take part (a small table)."""
    hops = ["SELECT sample_id, pointer AS hop FROM pointers"]
    for _ in range(MAX_HOPS - 1):
        hops = [f"SELECT h.sample_id, coalesce(p.pointer, h.hop) AS hop FROM ({hops[0]}) h "
                "LEFT JOIN pointers p ON p.sample_id = h.hop"]  # fmt: skip
    return f"WITH pointers AS ({pointers}) SELECT sample_id, hop AS duplicate_of FROM ({hops[0]})"


def merged_sql(joins: list[str], joined: dict[str, str]) -> str:
    """Every candidate of the group with its download outcome and the joined columns (``joined``: manifest column
    -> SQL; a column nothing fills is NULL), in manifest column order, with its ``order_``."""
    filled = {c: "c." + c for c in (f.name for f in schema.CANDIDATE_FIELDS) if c not in ("status", "error")}
    filled |= {f.name: "d." + f.name for f in schema.DOWNLOAD_FIELDS} | joined
    pending = literal(schema.STATUS_PENDING)
    columns = [  # a row the crawl rejected keeps its status; a pending row takes the download's (check_downloads)
        f"CASE WHEN c.status <> {pending} THEN c.status ELSE d.status END AS status",
        f"CASE WHEN c.status <> {pending} THEN c.error ELSE d.error END AS error",
    ]
    for field in schema.MANIFEST_SCHEMA:
        if field.name not in ("status", "error", "keep", "drop_reason"):
            columns.append(f"CAST({filled.get(field.name, 'NULL')} AS {_duck_type(field.type)}) AS {field.name}")
    return f"""
        SELECT {", ".join(columns)}, c.order_
        FROM group_candidates c
        LEFT JOIN downloads d ON c.status = {pending} AND d.sample_id = c.sample_id
        {" ".join(joins)}
    """


def _view(con, name: str, files: list[str], columns: list[str]) -> None:
    if files:
        select = f"SELECT {', '.join(columns)} FROM read_parquet({file_list(files)})"
    else:
        fields = {f.name: f for f in schema.MANIFEST_SCHEMA}
        select = "SELECT " + ", ".join(f"NULL::{_duck_type(fields[c].type)} AS {c}" for c in columns) + " WHERE false"
    con.execute(f"CREATE OR REPLACE TEMP VIEW {name} AS {select}")


def write_manifest(merge: GroupedMerge, rules: list[Rule], out: Path, metadata: dict[str, str] | None = None) -> Path:
    """Judge every group's rows and stream them, each group sorted in crawl order, into the manifest ``out``;
    check it before returning.

    ``metadata`` goes into the Parquet footer (``plantmix_code_version``, ...), readable by any Parquet reader.
    """
    con = merge.con
    names = ", ".join(schema.MANIFEST_SCHEMA.names)
    judged = f"""SELECT {names} FROM (SELECT *, drop_reason IS NULL AS keep
                 FROM (SELECT *, {drop_reason_sql(rules)} AS drop_reason FROM merged)) ORDER BY order_"""
    # The schema's own types and nullability (a cast fails loudly on a NULL in a required column); no Arrow schema
    # in the footer, so readers see the Parquet types alone, as in a file DuckDB writes.
    with pq.ParquetWriter(out, schema.MANIFEST_SCHEMA, compression="zstd", store_schema=False) as writer:
        for group in merge.groups:
            merge.define(group)
            check_downloads(con, merge.inputs, group)
            for batch in con.sql(judged).to_arrow_reader(ROW_GROUP_ROWS):
                writer.write_batch(batch.cast(schema.MANIFEST_SCHEMA))
        if metadata:
            writer.add_key_value_metadata(metadata)
    check_manifest(con, out)
    return out


def check_downloads(con: duckdb.DuckDBPyConnection, inputs: MergeInputs, group: Group) -> None:
    """Every download row of the group's shards is one pending candidate of the group's crawl range, and every
    pending candidate there has one: a sample_id held twice, or one whose candidate is elsewhere, would silently
    lose its download outcome; a candidate without one would pass for a failed download."""
    repeated = con.sql("SELECT sample_id FROM downloads GROUP BY 1 HAVING count(*) > 1 LIMIT 5").fetchall()
    if repeated:
        raise ManifestError(f"download results hold some sample_ids more than once: {[r[0] for r in repeated]}")
    stray = con.sql(
        f"""SELECT sample_id FROM downloads ANTI JOIN
            (SELECT sample_id FROM group_candidates WHERE status = {literal(schema.STATUS_PENDING)}) USING (sample_id)
            LIMIT 5"""
    ).fetchall()
    if stray:
        shards = [inputs.shards[k] for k in group.shards]
        raise ManifestError(
            f"download results of shards {shards[0]}..{shards[-1]} hold sample_ids that are not pending crawl rows "
            f"of those shards' crawl range: {[r[0] for r in stray]}"
        )
    check_results_cover_plans(con, inputs, group)


def check_results_cover_plans(con: duckdb.DuckDBPyConnection, inputs: MergeInputs, group: Group) -> None:
    """Every pending candidate of the group has a download row; else name the shard files that lack rows.

    One anti-join of the group's candidates; only when it finds rows are the plans read to say which shard lost them
    (a candidate no plan holds is named as such: the plan is then out of date)."""
    pending = f"SELECT sample_id FROM group_candidates WHERE status = {literal(schema.STATUS_PENDING)}"
    lost = con.sql(f"SELECT count(*) FROM ({pending}) ANTI JOIN downloads USING (sample_id)").fetchall()[0][0]
    if not lost:
        return
    plans = [inputs.plan_files[k] for k in group.shards]
    per_plan = con.sql(
        f"""SELECT filename, count(*), min(sample_id) FROM read_parquet({file_list(plans)}, filename = true)
            ANTI JOIN downloads USING (sample_id) GROUP BY 1 ORDER BY 1"""
    ).fetchall()
    shard_of = {plan: inputs.download_files[k] for plan, k in zip(plans, group.shards, strict=True)}
    named = [f"{shard_of.get(plan, plan)} lacks {n} planned row(s) (e.g. {example})" for plan, n, example in per_plan]
    unplanned = lost - sum(n for _, n, _ in per_plan)
    if unplanned > 0:
        named.append(f"{unplanned} pending crawl row(s) of this range are in no plan; plan the download again")
    raise ManifestError(f"download results missing: {'; '.join(named[:5])}; run the download stage for them again")


def check_manifest(con: duckdb.DuckDBPyConnection, manifest: Path) -> None:
    """Every candidate exactly once (same count, unique ids, none missing: so none invented either), every row with
    a final status; raise before anything is published. Ids are checked one hash partition at a time."""
    written = f"read_parquet({literal(manifest)})"
    n_candidates = con.sql("SELECT count(*) FROM candidates").fetchall()[0][0]
    n_rows = con.sql(f"SELECT count(*) FROM {written}").fetchall()[0][0]
    if n_rows != n_candidates:
        raise ManifestError(f"manifest has {n_rows} rows for {n_candidates} candidates")
    parts = -(-n_rows // UNIQUE_CHECK_ROWS) or 1  # one hash table of about UNIQUE_CHECK_ROWS ids at a time
    for part in range(parts):
        dup = con.sql(
            f"SELECT sample_id FROM {written} WHERE hash(sample_id) % {parts} = {part} "
            "GROUP BY 1 HAVING count(*) > 1 LIMIT 5"
        ).fetchall()
        if dup:
            raise ManifestError(f"sample_id not unique in the manifest: {[d[0] for d in dup]}")
        in_part = f"WHERE hash(sample_id) % {parts} = {part}"
        lost = con.sql(
            f"SELECT sample_id FROM (SELECT sample_id FROM candidates {in_part}) "
            f"ANTI JOIN (SELECT sample_id FROM {written} {in_part}) USING (sample_id) LIMIT 5"
        ).fetchall()
        if lost:  # equal counts and unique ids, yet a candidate is missing: another row took its place
            raise ManifestError(f"candidates missing from the manifest: {[r[0] for r in lost]}")
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
