"""The release folder, assembled from the finished shards and never seen half-written.

Locally the release is built in a hidden sibling folder (the shards hard-linked from the publish stage, so no
byte is copied twice) and renamed into place; an old release is moved aside first and deleted after. On an
object store, where nothing renames a folder, the files are written in place and ``release.json`` goes last and
is removed first: a release is complete exactly when its ``release.json`` exists.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

from pipeline.core import schema
from pipeline.core.io import is_local, join, url_to_fs

RELEASE_JSON = "release.json"


@contextlib.contextmanager
def staged_release(release_dir: str) -> Iterator[str]:
    """A folder to write the whole release into; on success it becomes ``release_dir``."""
    if not is_local(release_dir):
        fs, remote = url_to_fs(release_dir)
        marker = join(remote, RELEASE_JSON)
        if fs.exists(marker):
            fs.rm_file(marker)  # from here on the old release reads as incomplete
        yield release_dir
        return
    final = Path(release_dir)
    staging = final.parent / f".{final.name}.tmp-{uuid.uuid4().hex[:8]}"
    for stale in final.parent.glob(f".{final.name}.tmp-*"):  # a killed earlier attempt
        shutil.rmtree(stale, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        yield str(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = final.parent / f".{final.name}.old-{uuid.uuid4().hex[:8]}"
    if final.exists():
        os.replace(final, old)
    os.replace(staging, final)
    shutil.rmtree(old, ignore_errors=True)


def place_file(source: str, dest: str) -> None:
    """Put a finished file into the release: a hard link locally (a copy across filesystems), else a copy."""
    if is_local(source) and is_local(dest):
        Path(dest).parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(source, dest)
        except OSError:
            shutil.copyfile(source, dest)
        return
    fs, remote_source = url_to_fs(source)
    _, remote_dest = url_to_fs(dest)
    fs.copy(remote_source, remote_dest)


def concat_parquet(parts: list[str], dest: str) -> int:
    """Append the ``parts`` (each one shard's rows, RELEASE_SCHEMA) into one file, in order; returns the rows.

    One part in memory at a time, one row group per part: the same parts give the same bytes.
    """
    fs, remote = url_to_fs(dest)
    rows = 0
    with fs.open(remote, "wb") as sink, pq.ParquetWriter(sink, schema.RELEASE_SCHEMA, compression="zstd") as writer:
        for part in parts:
            part_fs, part_path = url_to_fs(part)
            with part_fs.open(part_path, "rb") as f:
                table = pq.read_table(f).cast(schema.RELEASE_SCHEMA)
            if table.num_rows:
                writer.write_table(table)
            rows += table.num_rows
    return rows
