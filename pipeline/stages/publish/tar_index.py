"""Where each image's bytes are inside a webdataset tar, so a release shard can copy them without a re-encode.

A release shard mixes samples from every download shard (the release is shuffled across sources), so reading
the download tars front to back per release shard would read every tar once per release shard. Instead each
download tar's headers are read once (tarfile seeks past the data; nothing is decoded) into an index of
``(key, ext, offset, size)``, and a release shard reads exactly its images' byte ranges.
"""

from __future__ import annotations

import tarfile
from typing import Any

import pyarrow as pa

from pipeline.core.io import url_to_fs

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
INDEX_SCHEMA = pa.schema(
    [
        pa.field("tar", pa.string()),  # the tar as the manifest names it (relative to the build folder)
        pa.field("key", pa.string()),
        pa.field("ext", pa.string()),  # image extension of the member: jpg, png or webp
        pa.field("data_offset", pa.int64()),  # first byte of the member's data
        pa.field("data_size", pa.int64()),
    ]
)


def index_tar(url: str, name: str) -> pa.Table:
    """The image members of the tar at ``url`` (local path or fsspec URL); ``name`` fills the ``tar`` column."""
    keys: list[str] = []
    exts: list[str] = []
    offsets: list[int] = []
    sizes: list[int] = []
    fs, path = url_to_fs(url)
    with fs.open(path, "rb") as f, tarfile.open(fileobj=f, mode="r:") as tar:
        for member in _members(tar):
            key, _, ext = member.name.rpartition(".")
            if member.isfile() and ext.lower() in IMAGE_EXTENSIONS and key:
                keys.append(key)
                exts.append(ext)
                offsets.append(member.offset_data)
                sizes.append(member.size)
    n = len(keys)
    return pa.table(
        [pa.array([name] * n, pa.string()), keys, exts, pa.array(offsets, pa.int64()), pa.array(sizes, pa.int64())],
        schema=INDEX_SCHEMA,
    )


def _members(tar: tarfile.TarFile) -> Any:
    """Every member, without tarfile keeping them all in its ``members`` list (a 10k-sample tar has 30k)."""
    while (member := tar.next()) is not None:
        yield member
        tar.members.clear()


def read_range(f: Any, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of an open file; raises if the file ends first (a truncated tar)."""
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise OSError(f"{getattr(f, 'name', f)}: {size} bytes expected at offset {offset}, {len(data)} read")
    return data
