"""One release shard: its packlist rows -> a webdataset tar (``<key>.<ext>``, ``<key>.txt``, ``<key>.json``).

The image bytes are copied from the download tars by byte range (never decoded or re-encoded); the caption and
the metadata come from the manifest. webdataset's ``TarWriter`` writes the tar with a fixed integer mtime (a
float one would cost every member an extra pax header), owner and mode, and the samples go in position order, so
the same packlist always gives a byte-identical shard.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.core.io import is_local, join, url_to_fs

FETCH_BATCH = 256  # images fetched at once: bounds memory, and lets object stores serve the ranges concurrently
TAR_MTIME = 0  # a fixed member time (not the clock), an integer (a float adds a pax header per member)
TAR_OWNER = "plantmix"  # user and group of every member
TAR_MODE = 0o444  # webdataset's TarWriter default
JSON_EXCLUDED = ("shard", "keep", "source_tar", "source_key", "ext", "data_offset", "data_size", "position")


def write_shard(rows: pa.Table, build_root: str, dest: Path) -> dict[str, int]:
    """Write ``rows`` (packlist rows of one shard, in position order) as the tar ``dest``; return counts."""
    from webdataset import TarWriter  # here, not at the top: webdataset imports torch, which the driver never needs

    maps = [f.name for f in rows.schema if pa.types.is_map(f.type) and f.name not in JSON_EXCLUDED]
    written = image_bytes = 0
    with open(dest, "wb") as f:
        writer = TarWriter(f, user=TAR_OWNER, group=TAR_OWNER, mode=TAR_MODE, mtime=TAR_MTIME, encoder=False)
        for batch in rows.to_batches(FETCH_BATCH):
            records = batch.to_pylist()
            images = _fetch(build_root, records)
            for record, image in zip(records, images, strict=True):
                writer.write(
                    {
                        "__key__": record["key"],
                        record["ext"]: image,
                        "txt": (record["caption"] or "").encode("utf-8"),
                        "json": sample_json(record, maps),
                    }
                )
                written += 1
                image_bytes += len(image)
        writer.close()
    return {"rows": written, "image_bytes": image_bytes}


def _fetch(build_root: str, records: list[dict[str, Any]]) -> list[bytes]:
    """The image bytes of ``records``, by byte range of their download tar."""
    if is_local(build_root):
        images = _read_local(build_root, records)
    else:
        paths = {tar: url_to_fs(join(build_root, tar))[1] for tar in {r["source_tar"] for r in records}}
        fs, _ = url_to_fs(build_root)
        remote = [paths[r["source_tar"]] for r in records]
        starts = [r["data_offset"] for r in records]
        ends = [r["data_offset"] + r["data_size"] for r in records]
        images = fs.cat_ranges(remote, starts, ends, on_error="raise")
    for record, image in zip(records, images, strict=True):
        if len(image) != record["data_size"]:
            where = f"{record['source_tar']} at {record['data_offset']}"
            raise OSError(f"{where}: {record['data_size']} bytes expected for {record['sample_id']}, {len(image)} read")
    return images


def _read_local(build_root: str, records: list[dict[str, Any]]) -> list[bytes]:
    """Each download tar opened once per batch, its ranges read in file order (fsspec opens a file per range)."""
    by_tar: dict[str, list[int]] = defaultdict(list)
    for i, record in enumerate(records):
        by_tar[record["source_tar"]].append(i)
    images: list[bytes] = [b""] * len(records)
    for tar, indices in by_tar.items():
        _, path = url_to_fs(join(build_root, tar))
        fd = os.open(path, os.O_RDONLY)
        try:
            for i in sorted(indices, key=lambda i: records[i]["data_offset"]):
                images[i] = os.pread(fd, records[i]["data_size"], records[i]["data_offset"])
        finally:
            os.close(fd)
    return images


def sample_json(record: dict[str, Any], maps: list[str] | None = None) -> bytes:
    """Every metadata field of a sample (license, rights holder, attribution, taxonomy, source ids, scores).

    ``maps``: the record's map columns (Arrow gives a map as a list of (key, value) pairs); None: look at every
    value. ``source_metadata`` (a JSON object as text in the manifest) is nested as the object itself.
    """
    if maps is None:
        meta = {k: _plain(v) for k, v in record.items() if k not in JSON_EXCLUDED}
    else:
        meta = {k: v for k, v in record.items() if k not in JSON_EXCLUDED}
        for name in maps:
            meta[name] = _plain(meta[name])
    if meta.get("source_metadata") is not None:
        meta["source_metadata"] = json.loads(meta["source_metadata"])
    return json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")


def _plain(value: Any) -> Any:
    """Arrow's Python values -> JSON: a map column arrives as a list of (key, value) pairs."""
    if isinstance(value, list) and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        return dict(value)
    return value
