"""Paths on any fsspec filesystem (local, ``s3://``, ``gs://``, ``hf://``), atomic writes and small read helpers.

A reader never sees a half-written file. On a local disk we write to a temporary name in the same directory,
``fsync`` it, ``os.replace`` it into place (atomic on POSIX) and ``fsync`` the directory, so a power cut leaves the
old file or the whole new one, never a renamed empty file. On an object store a single PUT is atomic per object,
so a file is uploaded whole under its final name; a stage's set of files becomes visible through its completion
marker, written last (see :mod:`pipeline.core.harness`).
"""

from __future__ import annotations

import io
import json
import os
import posixpath
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem


def url_to_fs(url: str | Path) -> tuple[fsspec.AbstractFileSystem, str]:
    """``(filesystem, path on it)`` for a local path or an fsspec URL.

    Without a listings cache: other processes (an orchestrator's workers) write the same build, and a folder
    listing cached here (s3fs keeps one per folder) would hide their new files from ``exists`` and ``open``.
    """
    return fsspec.core.url_to_fs(str(url), use_listings_cache=False)


def is_local(url: str | Path) -> bool:
    return isinstance(url_to_fs(url)[0], LocalFileSystem)


def join(base: str, *parts: str) -> str:
    """Join path parts onto a local path or URL with ``/`` (keeps ``s3://`` intact)."""
    return posixpath.join(str(base), *parts)


def resolve(url: str | Path) -> str:
    """An absolute local path, or the URL unchanged: builds record where their files are."""
    return str(url) if "://" in str(url) else str(Path(url).resolve())


def exists(url: str) -> bool:
    fs, path = url_to_fs(url)
    return fs.exists(path)


def isfile(url: str | Path) -> bool:
    fs, path = url_to_fs(url)
    return fs.isfile(path)


def isdir(url: str | Path) -> bool:
    fs, path = url_to_fs(url)
    return fs.isdir(path)


def open_input(url: str | Path, mode: str = "rb") -> IO:
    """Open an input file on any filesystem (export files, plans, shards); the caller closes it."""
    fs, path = url_to_fs(url)
    return fs.open(path, mode)


def open_lines(url: str | Path) -> IO[bytes]:
    """Open a text file for reading line by line, in binary; the caller closes it.

    Through a buffer: fsspec's own ``readline`` reads a whole block (50 MiB on S3) for every line.
    """
    return io.BufferedReader(open_input(url, "rb"), buffer_size=1 << 20)


def listdir_names(url: str, suffix: str = "") -> list[str]:
    """Sorted base names of the files directly in ``url`` that end with ``suffix`` (none when it is absent)."""
    fs, path = url_to_fs(url)
    if not fs.exists(path):
        return []
    fs.invalidate_cache(path)
    names = [posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)]
    return sorted(n for n in names if n.endswith(suffix))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a local temporary path; on success it becomes ``path`` (renamed locally, uploaded otherwise)."""
    if not is_local(path):
        fd, tmp = tempfile.mkstemp(prefix="plantmix-", suffix=".tmp")
        os.close(fd)
        try:
            yield Path(tmp)
            fs, remote = url_to_fs(path)
            fs.put_file(tmp, remote)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the finished file gets the usual mode
    try:
        yield Path(tmp)
        fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def fsync_file(path: str | Path) -> None:
    """Flush a written file's data to the disk (before a rename makes it visible under its final name)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | Path) -> None:
    """Flush a folder's entries (the renames into it) to the disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # Windows opens no folder; its renames are journaled by NTFS
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def publish_files(local_dir: Path, dest_dir: str) -> None:
    """Move every file of ``local_dir`` into ``dest_dir`` under the same name (rename locally, upload otherwise).

    Locally every file is staged whole first (each fsynced, and the staging folder), then the renames follow one
    another with no work between them, and the destination folder is fsynced: a crash loses either nothing or only
    the tail of those renames, never a file's contents. The caller's marker, written after, commits the set.
    """
    items = sorted(p for p in local_dir.iterdir() if p.is_file())
    if is_local(dest_dir):
        Path(dest_dir).mkdir(parents=True, exist_ok=True)
        for item in items:
            fsync_file(item)
        fsync_dir(local_dir)
        for item in items:
            os.replace(item, Path(dest_dir) / item.name)
        fsync_dir(dest_dir)
        return
    fs, remote = url_to_fs(dest_dir)
    for item in items:
        fs.put_file(str(item), join(remote, item.name))
        item.unlink()


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | Path) -> Any:
    with open_input(path, "rb") as f:
        return json.loads(f.read())


def write_parquet(table: pa.Table, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_parquet(path: str | Path, columns: list[str] | None = None) -> pa.Table:
    fs, remote = url_to_fs(path)
    return pq.read_table(remote, columns=columns, filesystem=fs)


# What tells one version of a file from another, by filesystem: local mtime, S3 / GCS / HF content tags, dates.
VERSION_KEYS = ("mtime", "ETag", "etag", "md5Hash", "blob_id", "LastModified", "last_modified", "updated")


def file_version(info: dict[str, Any]) -> Any:
    """The version an fsspec ``info()`` entry gives its file (None if the filesystem gives none)."""
    return next((info[key] for key in VERSION_KEYS if info.get(key) is not None), None)


def parquet_rows(path: str | Path) -> int:
    """Row count from the Parquet footer, without reading the data."""
    fs, remote = url_to_fs(path)
    with fs.open(remote, "rb") as f:
        return pq.ParquetFile(f).metadata.num_rows
