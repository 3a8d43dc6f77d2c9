"""DuckDB connections for the build's global steps: bounded memory, spill space, any fsspec filesystem.

Every step that sees the whole build at once (the download plan, the crawl's repeat check, the thresholds and
the merge) is a DuckDB query over the stages' Parquet files: DuckDB streams, spills joins and sorts to disk past
``memory_limit``, and the driver never holds per-row Python objects.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Iterator

import duckdb
import numpy as np
import pyarrow as pa

from pipeline.core.config import DuckDBConfig
from pipeline.core.io import is_local, url_to_fs

BULK_FLUSH = "16MB"


def connect(config: DuckDBConfig | None = None, *urls: str) -> duckdb.DuckDBPyConnection:
    """A connection with the recipe's memory limit and threads; ``urls`` on object stores become readable."""
    config = config or DuckDBConfig()
    con = duckdb.connect()
    spill = spill_directory(config)
    # Never fetch extensions from the internet behind the user's back (object stores go through fsspec).
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    con.execute(f"SET memory_limit = {literal(config.memory_limit)}")
    con.execute(f"SET temp_directory = {literal(spill)}")
    # A large block a query frees goes back to the system at once, not into DuckDB's allocator cache: a step's
    # peak memory is then its live data, not that plus what its earlier queries once held (the iNaturalist crawl at
    # 1M photos: peak 672 -> 592 MB; a threshold of 24MB or more keeps the 672).
    con.execute(f"SET allocator_bulk_deallocation_flush_threshold = {literal(BULK_FLUSH)}")
    if config.threads:
        con.execute(f"SET threads = {int(config.threads)}")
    register_filesystems(con, *urls)
    return con


def spill_directory(config: DuckDBConfig | None = None, create: bool = False) -> str:
    """Where DuckDB spills joins and sorts: the recipe's ``temp_directory``, or PlantMix's folder in the system temp
    (made when ``create``: adapters keep their scratch files there too)."""
    config = config or DuckDBConfig()
    folder = config.temp_directory or os.path.join(tempfile.gettempdir(), "plantmix-duckdb")
    if create:
        os.makedirs(folder, exist_ok=True)
    return folder


def register_filesystems(con: duckdb.DuckDBPyConnection, *urls: str) -> None:
    """Make ``urls`` on object stores readable by ``con`` through their fsspec filesystems (s3fs, gcsfs, ...).

    DuckDB registers an fsspec filesystem under its first protocol name and serves every one of its protocols
    (``s3://`` and ``s3a://`` for s3fs); a URL whose filesystem is not registered would make DuckDB try to load
    its own httpfs extension instead, which needs credentials of its own (and, not installed, the network).
    """
    for url in urls:
        if is_local(url):
            continue
        fs, _ = url_to_fs(url)
        protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
        if not con.filesystem_is_registered(protocol):
            con.register_filesystem(fs)


def literal(value: str) -> str:
    """A SQL string literal."""
    return "'" + str(value).replace("'", "''") + "'"


def file_list(paths: Iterable[str]) -> str:
    """A DuckDB list literal of file paths, for ``read_parquet([...])``."""
    return "[" + ", ".join(literal(p) for p in paths) + "]"


def kv_metadata(metadata: dict[str, str]) -> str:
    """The ``COPY ... (FORMAT parquet ...)`` option that writes ``metadata`` into the Parquet footer ('' if none)."""
    if not metadata:
        return ""
    return ", KV_METADATA {" + ", ".join(f"{literal(key)}: {literal(value)}" for key, value in metadata.items()) + "}"


def in_row_order(batches: Iterable[pa.RecordBatch], column: str, batch_rows: int) -> Iterator[pa.RecordBatch]:
    """The batches of a query that gives exactly one row per row of a table, put back in that table's order.

    ``column`` is the table's ``rowid`` (0, 1, 2, ... in insertion order). A join does not keep the order of its
    probe side (DuckDB's threads each take a stretch of the table and their outputs interleave), and an ORDER BY
    over the whole result would hold all of it; here only the rows that come back ahead of their turn wait
    (about one stretch per thread), whatever the table's size. Batches of about ``batch_rows`` rows come out;
    a row that is missing or repeated raises ``RuntimeError``.
    """
    waiting: dict[int, pa.RecordBatch] = {}  # runs of consecutive rows by their first rowid
    ready: list[pa.RecordBatch] = []
    ready_rows = next_row = 0
    for batch in batches:
        if batch.num_rows == 0:
            continue
        rows = batch.column(column).to_numpy(zero_copy_only=False)
        cuts = (np.flatnonzero(np.diff(rows) != 1) + 1).tolist()
        for start, end in zip([0, *cuts], [*cuts, len(rows)], strict=True):
            first = int(rows[start])
            if first in waiting or first < next_row:
                raise RuntimeError(f"row {first} of the query came back twice")
            waiting[first] = batch.slice(start, end - start)
        while next_row in waiting:
            run = waiting.pop(next_row)
            ready.append(run)
            next_row += run.num_rows
            ready_rows += run.num_rows
            if ready_rows >= batch_rows:
                yield pa.concat_batches(ready)
                ready, ready_rows = [], 0
    if waiting:
        raise RuntimeError(f"rows {next_row}.. of the query never came back ({len(waiting)} runs after them did)")
    if ready:
        yield pa.concat_batches(ready)
