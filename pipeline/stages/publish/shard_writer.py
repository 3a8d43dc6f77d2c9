"""One release shard: its packlist rows -> a webdataset tar (``<key>.<ext>``, ``<key>.txt``, ``<key>.json``).

The image bytes are copied from the download tars by byte range (never decoded or re-encoded); the caption and
the metadata come from the manifest. webdataset's ``TarWriter`` writes the tar with a fixed mtime, owner and
mode, and the samples go in position order, so the same packlist always gives a byte-identical shard.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.core.io import join, url_to_fs

FETCH_BATCH = 256  # images fetched at once: bounds memory, and lets object stores serve the ranges concurrently
TAR_MTIME = 0.0  # a fixed member time (not the clock): reruns give the same bytes
JSON_EXCLUDED = ("shard", "keep", "source_tar", "source_key", "ext", "data_offset", "data_size", "position")


def write_shard(rows: pa.Table, build_root: str, dest: Path) -> dict[str, int]:
    """Write ``rows`` (packlist rows of one shard, in position order) as the tar ``dest``; return counts."""
    from webdataset import TarWriter  # here, not at the top: webdataset imports torch, which the driver never needs

    written = image_bytes = 0
    with open(dest, "wb") as f:
        writer = TarWriter(f, user="plantmix", group="plantmix", mtime=TAR_MTIME, encoder=False)
        for batch in rows.to_batches(FETCH_BATCH):
            records = batch.to_pylist()
            images = _fetch(build_root, records)
            for record, image in zip(records, images, strict=True):
                writer.write(
                    {
                        "__key__": record["key"],
                        record["ext"]: image,
                        "txt": (record["caption"] or "").encode("utf-8"),
                        "json": sample_json(record),
                    }
                )
                written += 1
                image_bytes += len(image)
        writer.close()
    return {"rows": written, "image_bytes": image_bytes}


def _fetch(build_root: str, records: list[dict[str, Any]]) -> list[bytes]:
    """The image bytes of ``records``, by byte range of their download tar."""
    paths = [join(build_root, r["source_tar"]) for r in records]
    fs, _ = url_to_fs(paths[0])
    remote = [url_to_fs(p)[1] for p in paths]
    starts = [r["data_offset"] for r in records]
    ends = [r["data_offset"] + r["data_size"] for r in records]
    images = fs.cat_ranges(remote, starts, ends, on_error="raise")
    for record, image in zip(records, images, strict=True):
        if len(image) != record["data_size"]:
            where = f"{record['source_tar']} at {record['data_offset']}"
            raise OSError(f"{where}: {record['data_size']} bytes expected for {record['sample_id']}, {len(image)} read")
    return images


def sample_json(record: dict[str, Any]) -> bytes:
    """Every metadata field of a sample (license, rights holder, attribution, taxonomy, source ids, scores)."""
    meta = {k: _plain(v) for k, v in record.items() if k not in JSON_EXCLUDED}
    return json.dumps(meta, sort_keys=True, ensure_ascii=False).encode("utf-8")


def _plain(value: Any) -> Any:
    """Arrow's Python values -> JSON: a map column arrives as a list of (key, value) pairs."""
    if isinstance(value, list) and all(isinstance(v, tuple) and len(v) == 2 for v in value):
        return dict(value)
    return value
