"""Crawl stage: run one source adapter and store its candidate rows (no image bytes) as Parquet.

Each source is one unit of work (``crawl/<source>.parquet`` + marker), streamed in batches so a source of
tens of millions of rows never sits in memory as Python objects. Rows keep the adapter's order,
so download plans and sample ids are identical on every rerun. A record id that appears twice in an
export keeps its first row; the repeat is kept too, as ``rejected`` with the row it repeats.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline import schema
from pipeline.config import Recipe, SourceSpec
from pipeline.sources.base import CrawlContext
from pipeline.sources.registry import read_source
from pipeline.stage import StageDir, run_shard

BATCH_ROWS = 50_000  # rows held in memory before they are written out


def crawl_source(recipe: Recipe, spec: SourceSpec, build_dir: Path) -> dict[str, Any]:
    """Read one source into ``<build>/crawl/<name>.parquet``, streaming; skipped when already done."""
    stage = StageDir(build_dir / "crawl")

    def work(tmp: Path) -> dict[str, Any]:
        ctx = CrawlContext(caption_style=recipe.caption_style)
        rows = mark_repeats(read_source(spec.adapter, {"name": spec.name, **spec.options}, ctx))
        counts: dict[str, int] = {}
        with pq.ParquetWriter(tmp / f"{spec.name}.parquet", schema.CANDIDATE_SCHEMA, compression="zstd") as out:
            for batch in _batched(rows):
                table = pa.Table.from_pylist(batch, schema=schema.CANDIDATE_SCHEMA)
                out.write_table(table)
                for status in table["status"].to_pylist():
                    counts[status] = counts.get(status, 0) + 1
        return {"rows": sum(counts.values()), "status": dict(sorted(counts.items()))}

    provenance = {"stage": "crawl", "source": spec.name, "adapter": spec.adapter, "options": spec.options}
    decides = {**provenance, "caption_style": recipe.caption_style}
    return run_shard(stage, spec.name, work, provenance, decides_output=decides)


def _batched(rows: Iterable[dict[str, Any]]) -> Iterator[list[dict[str, Any]]]:
    rows = iter(rows)
    while batch := list(itertools.islice(rows, BATCH_ROWS)):
        yield batch


def mark_repeats(rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    """Reject rows whose sample_id an earlier row already has, giving each its own id (streaming)."""
    first_row: dict[str, tuple[str | None, int | None]] = {}
    for row in rows:
        sid = row["sample_id"]
        if sid not in first_row:
            first_row[sid] = (row.get("input_file"), row.get("input_row"))
            yield row
            continue
        first_file, first_line = first_row[sid]
        row["status"] = schema.STATUS_REJECTED
        row["error"] = (
            f"{row.get('input_file')} row {row.get('input_row')}: record {row.get('source_record_id')!r} "
            f"repeats row {first_line} of {first_file}"
        )
        row["sample_id"] = schema.sample_id_for(row["source"], f"{sid}#repeat@{row.get('input_row')}")
        yield row


def candidate_files(recipe: Recipe, build_dir: Path) -> list[Path]:
    return [build_dir / "crawl" / f"{spec.name}.parquet" for spec in recipe.sources]
