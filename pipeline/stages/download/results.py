"""img2dataset's per-row outcome -> the download stage's own columns (status, error, sha256, sizes, key).

Classified once, when the shard finishes; the merge only joins the result.
"""

from __future__ import annotations

import pyarrow as pa

from pipeline.core import schema
from pipeline.core.layout import BuildLayout
from pipeline.net.addresses import BLOCKED_ADDRESS_PREFIX
from pipeline.net.client import TOO_LARGE_PREFIX
from pipeline.net.urls import BLOCKED_URL_PREFIX
from pipeline.stages.download.quarantine import QUARANTINED_PREFIX

ROBOTS_ERROR_PREFIX = "robots.txt disallows"
ROBOTS_UNREACHABLE_PREFIX = "robots.txt unreachable"
IMG2DATASET_AREA_ERROR = "image area too large"  # img2dataset's Resizer, after decoding

# sample_id + the columns the download stage adds to the manifest: the schema of download/<shard>.parquet.
DOWNLOAD_ROWS_SCHEMA = pa.schema(
    [pa.field("sample_id", pa.string()), pa.field("status", pa.string()), pa.field("error", pa.string())]
    + schema.DOWNLOAD_FIELDS
)


def classify(i2d_status: str | None, error: str | None) -> tuple[str, str | None]:
    """Map img2dataset's (status, error_message) to a manifest (status, error)."""
    if i2d_status == "success":
        return schema.STATUS_OK, None
    error = error or "no error message from img2dataset"
    if error.startswith(QUARANTINED_PREFIX):
        return schema.STATUS_QUARANTINED, error
    if error.startswith((BLOCKED_URL_PREFIX, BLOCKED_ADDRESS_PREFIX)):
        return schema.STATUS_BLOCKED, error
    if error.startswith(TOO_LARGE_PREFIX) or error == IMG2DATASET_AREA_ERROR:
        return schema.STATUS_TOO_LARGE, error
    if i2d_status == "failed_to_resize":
        if "decod" in error.lower():
            return schema.STATUS_FAILED_DECODE, error
        return schema.STATUS_FAILED_RESIZE, error
    if "X-Robots-Tag" in error:
        return schema.STATUS_OPTED_OUT, error
    if error.startswith(ROBOTS_UNREACHABLE_PREFIX):
        return schema.STATUS_FAILED_DOWNLOAD, error
    if error.startswith(ROBOTS_ERROR_PREFIX):
        return schema.STATUS_ROBOTS_DISALLOWED, error
    return schema.STATUS_FAILED_DOWNLOAD, error


def download_rows(i2d: pa.Table, shard: str) -> pa.Table:
    """One shard's img2dataset table -> ``DOWNLOAD_ROWS_SCHEMA`` (one shard: at most shard_size rows)."""
    mapped = [classify(s, e) for s, e in zip(i2d["status"].to_pylist(), i2d["error_message"].to_pylist(), strict=True)]
    ok = [status == schema.STATUS_OK for status, _ in mapped]
    tar = BuildLayout.tar_in_manifest(shard)
    return pa.table(
        {
            "sample_id": i2d["sample_id"].cast(pa.string()),
            "status": pa.array([m[0] for m in mapped], pa.string()),
            "error": pa.array([m[1] for m in mapped], pa.string()),
            "image_sha256": i2d["sha256"].cast(pa.string()),
            "width": i2d["width"].cast(pa.int32()),
            "height": i2d["height"].cast(pa.int32()),
            "original_width": i2d["original_width"].cast(pa.int32()),
            "original_height": i2d["original_height"].cast(pa.int32()),
            "shard": pa.array([tar if k else None for k in ok], pa.string()),
            "key": pa.array(
                [key if k else None for key, k in zip(i2d["key"].to_pylist(), ok, strict=True)], pa.string()
            ),
        },
        schema=DOWNLOAD_ROWS_SCHEMA,
    )
