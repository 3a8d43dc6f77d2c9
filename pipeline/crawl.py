"""Crawl stage: run one source adapter and store its candidate rows (no image bytes) as Parquet.

Each source is one unit of work (``crawl/<source>.parquet`` + marker). Rows keep the adapter's order,
so download plans and sample ids are identical on every rerun. A record id that appears twice in an
export keeps its first row; the repeat is kept too, as ``rejected`` with the row it repeats.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline import schema
from pipeline.config import Recipe, SourceSpec
from pipeline.io import write_parquet
from pipeline.sources.base import CrawlContext
from pipeline.sources.registry import read_source
from pipeline.stage import StageDir, run_shard


def crawl_source(recipe: Recipe, spec: SourceSpec, build_dir: Path) -> dict[str, Any]:
    """Read one source into ``<build>/crawl/<name>.parquet``; skipped when already done."""
    stage = StageDir(build_dir / "crawl")

    def work(tmp: Path) -> dict[str, Any]:
        ctx = CrawlContext(caption_style=recipe.caption_style)
        rows = mark_repeats(list(read_source(spec.adapter, {"name": spec.name, **spec.options}, ctx)))
        table = pa.Table.from_pylist(rows, schema=schema.CANDIDATE_SCHEMA)
        write_parquet(table, tmp / f"{spec.name}.parquet")
        counts: dict[str, int] = {}
        for status in table["status"].to_pylist():
            counts[status] = counts.get(status, 0) + 1
        return {"rows": table.num_rows, "status": dict(sorted(counts.items()))}

    provenance = {"stage": "crawl", "source": spec.name, "adapter": spec.adapter, "options": spec.options}
    decides = {**provenance, "caption_style": recipe.caption_style}
    return run_shard(stage, spec.name, work, provenance, decides_output=decides)


def mark_repeats(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Reject rows whose sample_id an earlier row already has, giving each its own id."""
    first_row: dict[str, dict[str, Any]] = {}
    for row in rows:
        sid = row["sample_id"]
        if sid not in first_row:
            first_row[sid] = row
            continue
        first = first_row[sid]
        row["status"] = schema.STATUS_REJECTED
        row["error"] = (
            f"{row.get('input_file')} row {row.get('input_row')}: record {row.get('source_record_id')!r} "
            f"repeats row {first.get('input_row')} of {first.get('input_file')}"
        )
        row["sample_id"] = schema.sample_id_for(row["source"], f"{sid}#repeat@{row.get('input_row')}")
    return rows


def candidate_files(recipe: Recipe, build_dir: Path) -> list[Path]:
    return [build_dir / "crawl" / f"{spec.name}.parquet" for spec in recipe.sources]
