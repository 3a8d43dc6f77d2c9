"""Atomic file writes and small read helpers shared by every stage.

A reader never sees a half-written file: we write to a temporary name in the same directory and
``os.replace`` it into place, which is atomic on POSIX file systems.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success move it into place, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_parquet(table: pa.Table, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_parquets(paths: list[Path], schema: pa.Schema | None = None) -> pa.Table:
    """Concatenate Parquet files (in the given order) into one table, optionally cast to ``schema``."""
    tables = [pq.read_table(p) for p in paths]
    if not tables:
        if schema is None:
            raise ValueError("no Parquet files to read and no schema to build an empty table")
        return schema.empty_table()
    table = pa.concat_tables(tables, promote_options="default")
    return table.select(schema.names).cast(schema) if schema is not None else table
