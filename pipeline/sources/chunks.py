"""Pieces of one large input file as crawl parts, so a single 12M-line TSV (CC12M) spreads over workers too.

A chunked part is ``<file>#rows=<first>-<last>``: the file's data rows ``first`` to ``last`` (1-based, as the
adapter numbers ``input_row``). The adapter reads the file from the start and skips the rows before ``first``
(numbering needs them), so every part's rows, joined in part order, are exactly the rows of the whole file.
The row count is bounded from above before reading (a Parquet file's metadata, or a text file's line count),
so a last part may hold no row.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from typing import Any

import pyarrow.parquet as pq

from pipeline.core.io import is_local, url_to_fs
from pipeline.sources.base import ConfigError
from pipeline.sources.textfiles import open_binary

ROWS_MARK = "#rows="
_BLOCK = 4 << 20


def chunk_parts(path: str, row_bound: int, chunk_rows: int) -> list[str]:
    """``path`` itself when it has at most ``chunk_rows`` rows, else one part per ``chunk_rows`` rows."""
    if row_bound <= chunk_rows:
        return [path]
    starts = range(0, row_bound, chunk_rows)
    return [f"{path}{ROWS_MARK}{start + 1}-{min(start + chunk_rows, row_bound)}" for start in starts]


def split_part(part: str) -> tuple[str, int | None, int | None]:
    """``(file, first, last)`` of a part; ``first``/``last`` None for a whole file."""
    path, mark, span = part.rpartition(ROWS_MARK)
    if not mark:
        return part, None, None
    first, _, last = span.partition("-")
    if not (first.isdigit() and last.isdigit()) or int(first) > int(last):
        raise ConfigError(f"{part}: a chunked part names its rows as {ROWS_MARK}<first>-<last>")
    return path, int(first), int(last)


def part_file(part: str) -> str:
    """The file a part reads (a chunked part's file, or the part itself)."""
    return split_part(part)[0]


def rows_between(rows: Iterator[tuple], first: int | None, last: int | None) -> Iterator[tuple]:
    """The items of ``rows`` (each starting with its 1-based row number) from ``first`` to ``last``; stops
    reading after ``last``."""
    for item in rows:
        if last is not None and item[0] > last:
            return
        if first is None or item[0] >= first:
            yield item


def parquet_rows(path: str) -> int:
    if is_local(path):
        return pq.ParquetFile(path).metadata.num_rows
    fs, remote = url_to_fs(path)
    return pq.ParquetFile(remote, filesystem=fs).metadata.num_rows


def text_lines(path: str) -> int:
    """Lines in a (possibly gzipped, possibly remote) text file, counted in blocks; cached per file version."""
    fs, remote = url_to_fs(path)
    info: dict[str, Any] = fs.info(remote)
    version = info.get("mtime") or info.get("ETag") or info.get("etag") or info.get("LastModified")
    return _count_lines(path, info.get("size"), str(version))


@functools.lru_cache(maxsize=256)
def _count_lines(path: str, size: int | None, version: str) -> int:
    lines, last = 0, b"\n"
    with open_binary(path) as stream:
        while block := stream.read(_BLOCK):
            lines += block.count(b"\n")
            last = block[-1:]
    return lines + (last != b"\n")
