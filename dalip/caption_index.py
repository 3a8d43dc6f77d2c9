"""The kept rows' captions of a manifest, on disk and sorted by shard, read one shard at a time.

A manifest at PlantMix-13M size has 13M kept rows; a Python dict of ``(shard, key) -> caption`` per rank would
hold ~4.5 GiB. Instead the manifest is streamed once in Arrow batches (the kept rows, the chosen caption style,
the shard resolved to a URL and numbered), DuckDB sorts those three columns into one Parquet file (spilling to
disk, not RAM), and a loader worker reads the row groups of the shard it is about to stream: memory per worker
is one shard's captions.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

INDEX_SCHEMA = pa.schema([("shard_no", pa.int32()), ("key", pa.string()), ("caption", pa.string())])
ROW_GROUP_ROWS = 16_384  # small enough that reading one shard's row groups reads little of its neighbours
BATCH_ROWS = 65_536


@dataclass
class IndexedRows:
    """What building the index found: shard URLs by number, the manifest each came from, counts."""

    shard_numbers: dict[str, int] = field(default_factory=dict)
    shard_origin: dict[str, str] = field(default_factory=dict)
    fallbacks: int = 0  # kept rows without the requested caption variant


class CaptionIndex:
    """Captions of the kept rows, per shard URL. Picklable (loader workers get the path and the row-group map);
    the folder is removed when the object that built it is collected in the process that built it."""

    def __init__(self, path: str, row_groups: dict[str, tuple[int, int]], shard_numbers: dict[str, int]) -> None:
        self.path = path
        self.row_groups = row_groups  # shard URL -> (first row group, last row group)
        self.shard_numbers = shard_numbers
        self._current: tuple[str, dict[str, str]] | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_current": None}

    def captions(self, url: str) -> dict[str, str]:
        """``key -> caption`` of the shard's kept rows (the last shard read is cached)."""
        if self._current is None or self._current[0] != url:
            self._current = (url, self._read(url))
        return self._current[1]

    def caption_of(self, url: str | None, key: str | None) -> str | None:
        if url is None or key is None or url not in self.row_groups:
            return None
        return self.captions(url).get(key)

    def _read(self, url: str) -> dict[str, str]:
        first, last = self.row_groups[url]
        table = pq.ParquetFile(self.path).read_row_groups(range(first, last + 1), columns=list(INDEX_SCHEMA.names))
        table = table.filter(pc.equal(table["shard_no"], self.shard_numbers[url]))
        return dict(zip(table["key"].to_pylist(), table["caption"].to_pylist(), strict=True))


def build_caption_index(
    batches: Callable[[IndexedRows], Iterator[pa.RecordBatch]],
    folder: str | Path | None = None,
    memory_limit: str = "1GB",
) -> tuple[CaptionIndex, IndexedRows, dict[str, int]]:
    """Write the batches ``(shard_no, key, caption)`` that ``batches(found)`` yields, sorted, into a new folder
    under ``folder`` (default: the system temp dir); return the index, what was found and the distinct kept
    samples per shard URL. Duplicate ``(shard, key)`` rows count once (the last one's caption is used)."""
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="dalip-captions-", dir=folder))
    owner = os.getpid()
    try:
        found = IndexedRows()
        unsorted, index = work / "unsorted.parquet", work / "captions.parquet"
        with pq.ParquetWriter(unsorted, INDEX_SCHEMA) as writer:
            for batch in batches(found):
                writer.write_batch(batch)
        numbers = {n: url for url, n in found.shard_numbers.items()}
        con = duckdb.connect(config={"memory_limit": memory_limit, "temp_directory": str(work / "spill")})
        try:
            query = f"SELECT shard_no, key, caption FROM read_parquet('{unsorted}') ORDER BY shard_no, key"
            with pq.ParquetWriter(index, INDEX_SCHEMA) as writer:
                for batch in con.sql(query).to_arrow_reader(ROW_GROUP_ROWS):
                    writer.write_batch(batch, row_group_size=ROW_GROUP_ROWS)
            counts = con.execute(
                f"SELECT shard_no, count(DISTINCT key) FROM read_parquet('{index}') GROUP BY shard_no"
            ).fetchall()
        finally:
            con.close()
        unsorted.unlink()
        row_groups = _row_groups_by_shard(index, numbers)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    caption_index = CaptionIndex(str(index), row_groups, found.shard_numbers)
    weakref.finalize(caption_index, _remove_if_owner, work, owner)
    return caption_index, found, {numbers[n]: count for n, count in counts}


def _row_groups_by_shard(path: Path, urls: dict[int, str]) -> dict[str, tuple[int, int]]:
    """Shard URL -> the first and last row group holding its rows (the file is sorted by shard number)."""
    metadata = pq.ParquetFile(path).metadata
    spans: dict[str, tuple[int, int]] = {}
    for group in range(metadata.num_row_groups):
        stats = metadata.row_group(group).column(0).statistics
        for number in range(stats.min, stats.max + 1):
            if number in urls:
                first, _ = spans.get(urls[number], (group, group))
                spans[urls[number]] = (first, group)
    return spans


def _remove_if_owner(folder: Path, owner: int) -> None:
    if os.getpid() == owner:  # a forked loader worker that exits must not remove its parent's index
        shutil.rmtree(folder, ignore_errors=True)
