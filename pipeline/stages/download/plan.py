"""The download plan: the crawl's pending rows, in crawl order, cut into shards of exactly ``shard_size`` rows.

Streams the crawl files batch by batch (one shard's rows in memory at most) and writes one plan file per shard.
The crawl order is deterministic, so the plan, each sample's shard and therefore the finished shards are the same
on every rerun.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core import schema
from pipeline.core.io import url_to_fs
from pipeline.core.layout import shard_name

PASSED_COLUMNS = ["sample_id", "license", "rights_holder", "attribution"]  # stored in each image's json
# What a shard's later stages need without reading the crawl again (caption dedup reads caption_kind).
PLAN_COLUMNS = ["url", "caption", *PASSED_COLUMNS, "caption_kind", "domain"]


def pending_batches(candidate_files: list[str], batch_rows: int = 65_536) -> Iterator[pa.RecordBatch]:
    """The pending rows' plan columns, file by file in the given order."""
    for url in candidate_files:
        fs, path = url_to_fs(url)
        with fs.open(path, "rb") as f:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=batch_rows, columns=[*PLAN_COLUMNS, "status"]):
                pending = batch.filter(pc.equal(batch["status"], schema.STATUS_PENDING))
                if pending.num_rows:
                    yield pending.select(PLAN_COLUMNS)


def write_plan(candidate_files: list[str], out: Path, shard_size: int) -> dict[str, Any]:
    """Write ``out/<shard>.parquet`` per shard; returns ``{"rows", "shard_size", "units", "shards"}``."""
    shards: list[dict[str, Any]] = []
    buffer: list[pa.RecordBatch] = []
    buffered = 0

    def flush(rows: int) -> None:
        nonlocal buffer, buffered
        table = pa.Table.from_batches(buffer).combine_chunks()
        part, rest = table.slice(0, rows), table.slice(rows)
        name = shard_name(len(shards))
        pq.write_table(part, out / f"{name}.parquet", compression="zstd")
        digest = hashlib.sha256("\n".join(part["sample_id"].to_pylist()).encode()).hexdigest()[:16]
        shards.append({"shard": name, "rows": part.num_rows, "ids_sha256": digest})
        buffer, buffered = rest.to_batches(), rest.num_rows

    for batch in pending_batches(candidate_files):
        buffer.append(batch)
        buffered += batch.num_rows
        while buffered >= shard_size:
            flush(shard_size)
    if buffered:
        flush(buffered)
    return {
        "rows": sum(s["rows"] for s in shards),
        "shard_size": shard_size,
        "units": [s["shard"] for s in shards],
        "shards": shards,
    }
