"""Crawl stages: run the source adapters and store their candidate rows (no image bytes) as Parquet.

Units are the recipe's sources; each writes ``crawl/<source>.parquet`` with every column of
``CANDIDATE_SCHEMA``, streamed in batches so a source of tens of millions of rows never sits in memory. A source
that comes in many files (a pool's part files) is crawled one file per unit of the ``crawl_parts`` stage first,
spread over the orchestrator's workers; its crawl unit then joins the parts in order. Rows keep
the adapter's order, so download plans and sample ids are identical on every rerun. A record id that appears
twice in an export keeps its first row; each repeat is kept too, as ``rejected`` with the row it repeats and an
id of its own. Repeats are found by one DuckDB aggregation over the written rows, not by a dict of every id.

The fingerprint holds the source's options and the state of its input files (size and modification time, or the
object store's ETag), so an export updated in place is never silently reused: the crawl refuses it
(``StageMismatch``), as it refuses changed options, and the build stays one consistent snapshot (a new export is
a new build folder). Redoing the crawl alone would leave downloads made from the old rows beside new ones.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core import duck, schema
from pipeline.core.background_writer import BackgroundWriter
from pipeline.core.config import SourceSpec
from pipeline.core.harness import Build, Stage, unit_fingerprints
from pipeline.core.io import file_version, join, url_to_fs
from pipeline.sources.base import CrawlContext
from pipeline.sources.chunks import PARTITION_MARK, part_file
from pipeline.sources.registry import read_source_batches, source_parts

BATCH_ROWS = 8_192  # adapter rows held as Python dicts before they are written out (sets the crawl's peak memory)
# Adapter options that name input files (a file, a folder read recursively, or a glob), as the adapters' Config
# fields in pipeline/sources/ declare them; ``common_names`` is relative to ``directory`` and ``pages`` to the
# folder of ``path`` unless absolute.
INPUT_OPTIONS = ("path", "directory", "common_names", "pages")


# Parquet options for candidate files: dictionaries only where values repeat (a source's constants, licenses, the
# taxon-level columns), statistics only on short columns a query filters on; building dictionaries and min/max
# of unique strings (sample ids, URLs, errors) cost a quarter of the writing time and buy nothing.
DICTIONARY_COLUMNS = ["source", "domain", "caption", "caption_kind", "caption_variants", "scientific_name",
                      "common_name", "taxon_rank", "taxonomy", "license", "license_url", "rights_holder", "status",
                      "input_file"]  # fmt: skip
STATISTICS_COLUMNS = ["source", "domain", "caption_kind", "taxon_rank", "license", "status", "input_row"]

PART_SEPARATOR = ".part-"  # unit <source>.part-00003 crawls the fourth file of a source that comes in parts


class CrawlPartsStage(Stage):
    """Sources that come in many files (a pool's part files: DataComp and LAION ship thousands), one file cut in
    chunks (``chunk_rows``) or an export split in hash partitions (iNaturalist's ``partitions``) are crawled one
    part per unit, so an orchestrator spreads them over its workers (Prefect map, Dask) and a rerun resumes per
    part. Each unit writes ``crawl_parts/<source>.part-<k>.parquet``; the crawl stage then joins a source's parts
    in order and marks repeats across them. Sources read whole plan no unit here."""

    name = "crawl_parts"

    def plan(self, build: Build) -> list[str]:
        return [unit for spec in build.recipe.sources for unit in part_units(spec)]

    def units(self, build: Build) -> list[str]:
        return self.plan(build)

    def provenance(self, build: Build, unit: str) -> dict[str, Any]:
        spec, part = _part_of(build, unit)
        # A file or a chunk of one reads that file; a hash partition reads every input of its source.
        inputs = input_state(spec) if PARTITION_MARK in part else _files_state(part_file(part))
        return {"source": spec.name, "adapter": spec.adapter, "options": spec.options, "part": part,
                "inputs": inputs}  # fmt: skip

    def decides(self, build: Build, unit: str) -> Any:
        return {"stage": self.name, **self.provenance(build, unit), "caption_style": build.recipe.caption_style}

    def run(self, build: Build, unit: str, out: Path) -> dict[str, Any]:
        spec, part = _part_of(build, unit)
        status = _write_candidates(build, spec, out / f"{unit}.parquet", part)
        return {"rows": sum(status.values()), "status": dict(sorted(status.items())), "part": part}


class CrawlStage(Stage):
    name = "crawl"

    def plan(self, build: Build) -> list[str]:
        return [spec.name for spec in build.recipe.sources]

    def units(self, build: Build) -> list[str]:
        return self.plan(build)

    def provenance(self, build: Build, unit: str) -> dict[str, Any]:
        spec = _spec(build, unit)
        return {"source": spec.name, "adapter": spec.adapter, "options": spec.options, "inputs": input_state(spec)}

    def decides(self, build: Build, unit: str) -> Any:
        parts = part_units(_spec(build, unit))
        joined = unit_fingerprints(build.layout.stage_dir(CrawlPartsStage.name), parts) if parts else None
        return {"stage": self.name, **self.provenance(build, unit), "caption_style": build.recipe.caption_style,
                **({"parts": joined} if parts else {})}  # fmt: skip

    def run(self, build: Build, unit: str, out: Path) -> dict[str, Any]:
        spec = _spec(build, unit)
        raw = out / f"{unit}.raw.parquet"
        parts = part_units(spec)
        counts = _join_parts(build, parts, raw) if parts else _write_candidates(build, spec, raw)
        final = out / f"{unit}.parquet"
        con = duck.connect(build.recipe.duckdb)
        if mark_repeats(con, raw, final):  # repeats became rejected rows: count again
            counts = dict(
                con.sql(f"SELECT status, count(*) FROM read_parquet({duck.literal(final)}) GROUP BY 1").fetchall()
            )
        raw.unlink(missing_ok=True)
        stats = {"rows": sum(counts.values()), "status": dict(sorted(counts.items()))}
        return {**stats, "parts": len(parts)} if parts else stats


def part_units(spec: SourceSpec) -> list[str]:
    """``<source>.part-<k>`` per part of a source that comes in several; empty for a source read whole."""
    parts = source_parts(spec.adapter, _options(spec))
    return [f"{spec.name}{PART_SEPARATOR}{k:05d}" for k in range(len(parts))] if len(parts) > 1 else []


def _part_of(build: Build, unit: str) -> tuple[SourceSpec, str]:
    source, _, k = unit.rpartition(PART_SEPARATOR)
    spec = _spec(build, source)
    return spec, source_parts(spec.adapter, _options(spec))[int(k)]


def _options(spec: SourceSpec) -> dict[str, Any]:
    return {"name": spec.name, **spec.options}


def _write_candidates(build: Build, spec: SourceSpec, path: Path, part: str | None = None) -> dict[str, int]:
    """Stream the adapter's rows (of one part, if given) into ``path``; returns the rows per status."""
    ctx = CrawlContext(caption_style=build.recipe.caption_style, duckdb=build.recipe.duckdb)
    status: dict[str, int] = {}
    with BackgroundWriter(candidate_writer(path)) as writer:
        for batch in read_source_batches(spec.adapter, _options(spec), ctx, BATCH_ROWS, part=part):
            writer.write(batch)
            _count_status(batch, status)
    return status


def _count_status(batch: pa.RecordBatch, status: dict[str, int]) -> None:
    for entry in pc.value_counts(batch.column("status")).to_pylist():
        status[entry["values"]] = status.get(entry["values"], 0) + entry["counts"]


def candidate_writer(path: Path) -> pq.ParquetWriter:
    """A Parquet writer for candidate rows (``CANDIDATE_SCHEMA``)."""
    return pq.ParquetWriter(
        path,
        schema.CANDIDATE_SCHEMA,
        compression="zstd",
        use_dictionary=_leaf_paths(DICTIONARY_COLUMNS),
        write_statistics=STATISTICS_COLUMNS,
    )


def _leaf_paths(names: list[str]) -> list[str]:
    """Parquet column paths of the named columns (a struct's or map's leaves: ``taxonomy.genus``, ...)."""
    paths = []
    for name in names:
        kind = schema.CANDIDATE_SCHEMA.field(name).type
        if pa.types.is_map(kind):
            paths += [f"{name}.key_value.key", f"{name}.key_value.value"]
        elif pa.types.is_struct(kind):
            paths += [f"{name}.{kind.field(i).name}" for i in range(kind.num_fields)]
        else:
            paths.append(name)
    return paths


def _join_parts(build: Build, parts: list[str], path: Path) -> dict[str, int]:
    """The parts' rows, in part order, streamed into one local file (a batch at a time); the rows per status."""
    layout = build.layout
    status: dict[str, int] = {}
    with BackgroundWriter(candidate_writer(path)) as writer:
        for unit in parts:
            fs, remote = url_to_fs(layout.unit_file(CrawlPartsStage.name, unit))
            with fs.open(remote, "rb") as stream:
                for batch in pq.ParquetFile(stream).iter_batches(batch_size=BATCH_ROWS):
                    writer.write(batch)
                    _count_status(batch, status)
    return status


def input_state(spec: SourceSpec) -> dict[str, Any]:
    """Per input option: how many files it names, their bytes and a digest of (path, size, version) of each."""
    options = spec.options
    state = {}
    for key in INPUT_OPTIONS:
        location = options.get(key)
        if not isinstance(location, str) or not location:
            continue
        if key == "common_names" and isinstance(options.get("directory"), str) and not _absolute(location):
            location = join(options["directory"], location)
        if key == "pages" and isinstance(options.get("path"), str) and not _absolute(location):
            location = join(options["path"].rstrip("/").rpartition("/")[0] or ".", location)
        state[key] = _files_state(location)
    return state


def _absolute(location: str) -> bool:
    return "://" in location or Path(location).is_absolute()


def _files_state(location: str) -> dict[str, Any]:
    fs, path = url_to_fs(location)
    if fs.isdir(path):
        infos = fs.find(path, detail=True).values()
    elif any(char in path for char in "*?["):  # a glob of files (the pool adapter takes one)
        infos = fs.glob(path, detail=True).values()
    elif fs.exists(path):
        infos = [fs.info(path)]
    else:
        return {"missing": location}  # the adapter names it when the crawl runs
    digest, files, size = hashlib.sha256(), 0, 0
    for info in sorted((i for i in infos if i.get("type") != "directory"), key=lambda i: i["name"]):
        digest.update(f"{info['name']}\t{info.get('size')}\t{file_version(info)}\n".encode())
        files, size = files + 1, size + int(info.get("size") or 0)
    return {"files": files, "bytes": size, "sha256": digest.hexdigest()[:16]}


def _spec(build: Build, unit: str) -> SourceSpec:
    return next(spec for spec in build.recipe.sources if spec.name == unit)


def find_repeats(con, path: Path) -> pa.Table:
    """``ord`` (0-based row), ``first_file``, ``first_row`` of every row whose sample_id an earlier row has; only
    when a first scan finds two sample ids with one 64-bit hash (usually none: ids whose hashes differ differ) are
    the ids themselves compared and the rows looked up."""
    rows = f"read_parquet({duck.literal(path)}, file_row_number = true)"
    repeated = f"SELECT sample_id FROM {rows} GROUP BY 1 HAVING count(*) > 1"
    hashes_repeat = f"SELECT EXISTS (SELECT 1 FROM {rows} GROUP BY hash(sample_id) HAVING count(*) > 1)"
    if not con.sql(hashes_repeat).fetchall()[0][0]:
        return pa.table({"ord": pa.array([], pa.int64()), "first_file": pa.array([], pa.string()),
                         "first_row": pa.array([], pa.int64())})  # fmt: skip
    return con.sql(
        f"""
        WITH r AS (
            SELECT sample_id, file_row_number AS ord, input_file, input_row
            FROM {rows}
        ), repeated AS ({repeated})
        SELECT ord, first_value(input_file) OVER w AS first_file, first_value(input_row) OVER w AS first_row
        FROM r SEMI JOIN repeated USING (sample_id)
        WINDOW w AS (PARTITION BY sample_id ORDER BY ord)
        QUALIFY row_number() OVER w > 1
        ORDER BY ord
        """
    ).to_arrow_table()


def mark_repeats(con, raw: Path, final: Path) -> int:
    """Copy ``raw`` to ``final`` with each repeated record rejected and given its own id; returns the repeats.

    Only the repeats (usually none) are held in memory; the rows stream through one batch at a time.
    """
    repeats = find_repeats(con, raw)
    if repeats.num_rows == 0:
        raw.rename(final)
        return 0
    ords = repeats["ord"].to_numpy()
    first_file, first_row = repeats["first_file"].to_pylist(), repeats["first_row"].to_pylist()
    offset = 0
    source = pq.ParquetFile(raw)
    with candidate_writer(final) as writer:
        for batch in source.iter_batches(batch_size=BATCH_ROWS):
            lo, hi = np.searchsorted(ords, [offset, offset + batch.num_rows])
            if lo < hi:  # only the repeats become Python (repr of the record id is no column expression)
                local = ords[lo:hi] - offset
                rows = batch.take(pa.array(local)).to_pylist()
                for row, i in zip(rows, range(lo, hi), strict=True):
                    _reject_repeat(row, first_file[i], first_row[i])
                batch = _replace_rows(batch, local, rows)
            writer.write_batch(batch)
            offset += batch.num_rows
    return repeats.num_rows


def _replace_rows(batch: pa.RecordBatch, positions: np.ndarray, rows: list[dict[str, Any]]) -> pa.RecordBatch:
    """``batch`` with sample_id, status and error of the rows at ``positions`` replaced by ``rows``' values."""
    mask = np.zeros(batch.num_rows, bool)
    mask[positions] = True
    columns = {name: batch.column(name) for name in batch.schema.names}
    for name in ("sample_id", "status", "error"):
        replacement = pa.array([row[name] for row in rows], batch.schema.field(name).type)
        columns[name] = pc.replace_with_mask(columns[name], pa.array(mask), replacement)
    return pa.RecordBatch.from_arrays(list(columns.values()), schema=batch.schema)


def _reject_repeat(row: dict[str, Any], first_file: str | None, first_row: int | None) -> None:
    row["status"] = schema.STATUS_REJECTED
    row["error"] = (
        f"{row.get('input_file')} row {row.get('input_row')}: record {row.get('source_record_id')!r} "
        f"repeats row {first_row} of {first_file}"
    )
    row["sample_id"] = schema.sample_id_for(row["source"], f"{row['sample_id']}#repeat@{row.get('input_row')}")
