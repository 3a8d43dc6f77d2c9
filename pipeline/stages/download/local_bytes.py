"""Bytes of a local or pre-downloaded source, as a ``file://`` URL names them: a whole file, a byte range of a tar
shard (``#offset=<byte>&size=<bytes>``) or one cell of a Parquet file (``#row=<n>&column=<name>``).

Every read is capped at the fetch limit like a response body. Parquet cells are read a row group's column at a
time and the last few row groups are kept: a download shard's rows come from consecutive Parquet rows, so each
row group is decoded about once.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from urllib.parse import parse_qs

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.net.client import TOO_LARGE_PREFIX, FetchRefused
from pipeline.net.urls import BLOCKED_URL_PREFIX, UnsafeURL

CACHED_ROW_GROUPS = 4


class LocalBytes:
    """Reads what a ``file://`` URL's fragment names; thread-safe (one per download process)."""

    def __init__(self) -> None:
        self._groups: OrderedDict[tuple[str, int, str], pa.Array] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, path: Path, fragment: str, url: str, limit: int) -> bytes:
        values = parse_qs(fragment)
        if not fragment:
            return _capped(path, 0, None, url, limit)
        if set(values) == {"offset", "size"}:
            return _capped(path, _number(values, "offset", url), _number(values, "size", url), url, limit)
        if set(values) == {"row", "column"}:
            body = self._cell(path, _number(values, "row", url), values["column"][0], url)
            if len(body) > limit:
                raise FetchRefused(f"{TOO_LARGE_PREFIX}: {url[:200]} is larger than {limit} bytes")
            return body
        shapes = "#offset=<byte>&size=<bytes> or #row=<n>&column=<name>"
        raise UnsafeURL(f"{BLOCKED_URL_PREFIX}: {url[:200]}: a file fragment is {shapes}")

    def _cell(self, path: Path, row: int, column: str, url: str) -> bytes:
        parquet = pq.ParquetFile(path)
        metadata, start = parquet.metadata, 0
        for group in range(metadata.num_row_groups):
            rows = metadata.row_group(group).num_rows
            if row < start + rows:
                value = self._group_column(parquet, path, group, column)[row - start].as_py()
                break
            start += rows
        else:
            raise FetchRefused(f"{url[:200]}: the file has {start} rows")
        if isinstance(value, dict):  # Hugging Face's Image feature: {bytes, path}
            value = value.get("bytes")
        if not isinstance(value, bytes):
            raise FetchRefused(f"{url[:200]}: no image bytes in that cell ({type(value).__name__})")
        return value

    def _group_column(self, parquet: pq.ParquetFile, path: Path, group: int, column: str) -> pa.Array:
        key = (str(path), group, column)
        with self._lock:
            if key in self._groups:
                self._groups.move_to_end(key)
                return self._groups[key]
        array = parquet.read_row_group(group, columns=[column]).column(0).combine_chunks()
        with self._lock:
            self._groups[key] = array
            while len(self._groups) > CACHED_ROW_GROUPS:
                self._groups.popitem(last=False)
        return array


def _number(values: dict[str, list[str]], name: str, url: str) -> int:
    try:
        number = int(values[name][0])
    except (KeyError, ValueError, IndexError):
        raise UnsafeURL(f"{BLOCKED_URL_PREFIX}: {url[:200]}: {name} must be a whole number") from None
    if number < 0:
        raise UnsafeURL(f"{BLOCKED_URL_PREFIX}: {url[:200]}: negative {name}")
    return number


def _capped(path: Path, offset: int, size: int | None, url: str, limit: int) -> bytes:
    if size is not None and size > limit:
        raise FetchRefused(f"{TOO_LARGE_PREFIX}: {url[:200]} is larger than {limit} bytes")
    with open(path, "rb") as f:
        f.seek(offset)
        body = f.read(limit + 1 if size is None else size)
    if len(body) > limit:
        raise FetchRefused(f"{TOO_LARGE_PREFIX}: {url[:200]} is larger than {limit} bytes")
    if size is not None and len(body) != size:
        raise FetchRefused(f"{url[:200]}: the file ends {size - len(body)} bytes before the range does")
    return body
