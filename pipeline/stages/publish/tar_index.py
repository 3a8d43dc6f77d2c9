"""Where each image's bytes are inside a webdataset tar, so a release shard can copy them without a re-encode.

A release shard mixes samples from every download shard (the release is shuffled across sources), so reading
the download tars front to back per release shard would read every tar once per release shard. Instead each
download tar's headers are read once (the data is skipped; nothing is decoded) into an index of
``(key, ext, offset, size)``, and a release shard reads exactly its images' byte ranges.

The headers webdataset writes (img2dataset's tars: a ustar header per member, each after a pax header that holds
its float mtime) are parsed here directly, ~10x faster than ``tarfile`` builds a ``TarInfo`` per header; any
other member type or an unreadable header sends the whole tar through ``tarfile`` instead, so the index is
always what ``tarfile`` reads.
"""

from __future__ import annotations

import re
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
BLOCK = tarfile.BLOCKSIZE
FILE_TYPES = (tarfile.REGTYPE, tarfile.AREGTYPE)  # what the fast path indexes; pax headers are read too
PAX_RECORD = re.compile(rb"(\d+) ([^=]+)=")
PAX_WORDS = (b" path=", b" size=", b"hdrcharset", b"GNU.sparse")  # the keywords that change what the index reads


class _Unusual(Exception):
    """A header the fast path does not read (another member type, a binary size, a bad checksum): use tarfile."""


def index_tar(url: str, name: str) -> pa.Table:
    """The image members of the tar at ``url`` (local path or fsspec URL); ``name`` fills the ``tar`` column."""
    fs, path = url_to_fs(url)
    with fs.open(path, "rb") as f:
        try:
            members = list(_scan(f))
        except _Unusual:
            f.seek(0)
            members = list(_scan_with_tarfile(f))
    keys: list[str] = []
    exts: list[str] = []
    offsets: list[int] = []
    sizes: list[int] = []
    for member_name, offset, size in members:
        key, _, ext = member_name.rpartition(".")
        if ext.lower() in IMAGE_EXTENSIONS and key:
            keys.append(key)
            exts.append(ext)
            offsets.append(offset)
            sizes.append(size)
    n = len(keys)
    return pa.table(
        [pa.array([name] * n, pa.string()), keys, exts, pa.array(offsets, pa.int64()), pa.array(sizes, pa.int64())],
        schema=INDEX_SCHEMA,
    )


def _scan(f: Any) -> Any:
    """``(name, data offset, size)`` of every regular file, from the headers alone (the data is seeked past)."""
    offset = 0
    pax: dict[bytes, bytes] = {}
    while True:
        f.seek(offset)
        block = f.read(BLOCK)
        if len(block) < BLOCK:  # no end-of-archive blocks, or a truncated tar: tarfile says which
            raise _Unusual("end of file")
        if block.count(0) == BLOCK:  # the end of the archive
            return
        if _number(block[148:156]) != sum(block) - sum(block[148:156]) + 256:
            raise _Unusual("checksum")
        kind, size = block[156:157], _number(block[124:136])
        data = offset + BLOCK
        offset = data + -(-size // BLOCK) * BLOCK
        if kind == tarfile.XHDTYPE:
            f.seek(data)
            pax = _pax_records(f.read(size))
            continue
        if kind not in FILE_TYPES:
            raise _Unusual(kind)
        member = _string(block[:100])
        prefix = _string(block[345:500])
        if prefix:
            member = f"{prefix}/{member}"
        if pax:
            member = pax.pop(b"path").decode("utf-8") if b"path" in pax else member
            if b"size" in pax:
                size = int(pax.pop(b"size"))
                offset = data + -(-size // BLOCK) * BLOCK
            pax = {}  # the other keywords (mtime, uname, ...) do not say where the bytes are
        if kind == tarfile.AREGTYPE and member.endswith("/"):  # tarfile reads this as a directory
            continue
        yield member, data, size


def _number(field: bytes) -> int:
    if field[:1] in (b"\x80", b"\xff"):  # base-256 (GNU): rare, left to tarfile
        raise _Unusual("base-256 number")
    try:
        return int(field.split(b"\0", 1)[0].strip() or b"0", 8)
    except ValueError:
        raise _Unusual("number") from None


def _string(field: bytes) -> str:
    return field.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(buf: bytes) -> dict[bytes, bytes]:
    """The ``length keyword=value\\n`` records of a pax extended header (as tarfile parses them)."""
    if not any(word in buf for word in PAX_WORDS):  # mtime (and owner) only, as webdataset writes them
        return {}
    records: dict[bytes, bytes] = {}
    pos = 0
    while match := PAX_RECORD.match(buf, pos):
        length = int(match.group(1))
        if length == 0:
            raise _Unusual("pax record")
        records[match.group(2)] = buf[match.end(2) + 1 : match.start(1) + length - 1]
        pos += length
    if b"hdrcharset" in records or any(k.startswith(b"GNU.sparse") for k in records):
        raise _Unusual("pax")
    try:
        for value in (records.get(b"path", b""), records.get(b"size", b"0")):
            value.decode("utf-8")
        int(records.get(b"size", b"0"))
    except ValueError:
        raise _Unusual("pax value") from None
    return records


def _scan_with_tarfile(f: Any) -> Any:
    """``(name, data offset, size)`` of every regular file as ``tarfile`` reads it (any tar format)."""
    with tarfile.open(fileobj=f, mode="r:") as tar:
        while (member := tar.next()) is not None:
            if member.isfile():
                yield member.name, member.offset_data, member.size
            tar.members.clear()  # a 10k-sample tar has 30k members: tarfile need not keep them


def read_range(f: Any, offset: int, size: int) -> bytes:
    """``size`` bytes at ``offset`` of an open file; raises if the file ends first (a truncated tar)."""
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise OSError(f"{getattr(f, 'name', f)}: {size} bytes expected at offset {offset}, {len(data)} read")
    return data
