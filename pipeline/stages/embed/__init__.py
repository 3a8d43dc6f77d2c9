"""Embed stage: open_clip image and text embeddings per download shard, written once as sidecars.

Units follow the download shards one to one. Per shard ``NNNNN`` the stage writes, in ``<build>/embed/``:
``NNNNN.parquet`` (sample_id, key, clip_model, clip_score; the row order of the sidecars), ``NNNNN.image.npy`` and
``NNNNN.text.npy`` (L2-normalised float16, one row per id) and the marker (model id, rows, dim). Rows are the
shard's downloaded images in key order; captions come from the shard's plan. The model code (torch, open_clip)
is imported only when a shard is embedded (:mod:`.encode`).

A sidecar whose files are missing, truncated, of another row count or of another model than the recipe's is
detected by :func:`check_sidecars` and recomputed; it is never used as is.
"""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core import schema
from pipeline.core.config import EmbedConfig
from pipeline.core.harness import Build, Stage, marker_path, planned_units, read_marker
from pipeline.core.io import open_input, parquet_rows, read_parquet, url_to_fs
from pipeline.core.layout import BuildLayout

log = logging.getLogger(__name__)


class EmbedError(RuntimeError):
    """A shard's images cannot be embedded (a downloaded row's image is missing from its tar, ...)."""


class EmbedStage(Stage):
    name = "embed"
    follows = "download"
    retries = 1
    adds = ("clip_model", "clip_score")

    def enabled(self, build: Build) -> bool:
        return build.recipe.embed is not None

    def plan(self, build: Build) -> list[str]:
        if build.recipe.embed is None:
            return []
        units = planned_units(build.layout.stage_dir(self.follows))
        invalidate_bad_sidecars(build, units)
        return units

    def provenance(self, build: Build, unit: str) -> dict[str, Any]:
        return {"config": vars(build.recipe.embed).copy()}

    def decides(self, build: Build, unit: str) -> Any:
        download = read_marker(build.layout.stage_dir(self.follows), unit) or {}
        return {"model": build.recipe.embed.model_id, "download": download.get("fingerprint")}

    def run(self, build: Build, unit: str, out: Path) -> dict[str, Any]:
        from pipeline.models.encode import embed_batches  # torch + open_clip: only where shards are embedded

        config, layout = build.recipe.embed, build.layout
        rows = shard_rows(layout, unit)
        keys, captions = rows["key"].to_pylist(), [c or "" for c in rows["caption"].to_pylist()]
        blobs = read_images(layout.download_tar(unit), keys, build.recipe.download.encode_format)
        image, text = embed_batches(config, blobs, captions)
        scores = (image * text).sum(axis=1) if len(keys) else np.zeros(0, np.float32)
        np.save(out / f"{unit}.image.npy", image.astype(np.float16))
        np.save(out / f"{unit}.text.npy", text.astype(np.float16))
        ids = rows.select(["sample_id", "key"])
        ids = ids.append_column("clip_model", pa.array([config.model_id] * len(keys), pa.string()))
        ids = ids.append_column("clip_score", pa.array(scores, pa.float32()))
        pq.write_table(ids, out / f"{unit}.parquet")
        return {"rows": len(keys), "model": config.model_id, "dim": int(image.shape[1]) if len(keys) else None}


def shard_rows(layout: BuildLayout, shard: str) -> pa.Table:
    """The shard's downloaded rows (sample_id, key, caption) in key order."""
    done = read_parquet(layout.unit_file("download", shard), columns=["sample_id", "key", "status"])
    ok = done.filter(pc.equal(done["status"], schema.STATUS_OK)).drop_columns(["status"])
    captions = read_parquet(layout.plan_file(shard), columns=["sample_id", "caption"])
    return ok.join(captions, "sample_id", join_type="left outer").sort_by("key")


def read_images(tar_url: str, keys: list[str], ext: str = "jpg") -> list[bytes]:
    wanted = {f"{k}.{ext}": i for i, k in enumerate(keys)}
    blobs: list[bytes | None] = [None] * len(keys)
    with open_input(tar_url) as f, tarfile.open(fileobj=f, mode="r|") as tar:
        for member in tar:
            i = wanted.get(member.name)
            if i is not None:
                blobs[i] = tar.extractfile(member).read()
    missing = [keys[i] for i, b in enumerate(blobs) if b is None]
    if missing:
        raise EmbedError(f"{tar_url}: {len(missing)} downloaded rows have no image in the tar, e.g. key {missing[0]}")
    return blobs  # type: ignore[return-value]


def check_sidecars(layout: BuildLayout, shard: str, config: EmbedConfig, rows: int) -> str | None:
    """Why this shard's finished sidecars cannot be used (None when they can)."""
    record = read_marker(layout.stage_dir("embed"), shard)
    if record is None:
        return "not embedded yet"
    stats = record["stats"]
    if stats.get("model") != config.model_id:
        return f"embedded with {stats.get('model')!r}, the recipe asks for {config.model_id!r}"
    try:
        ids = parquet_rows(layout.unit_file("embed", shard))
        shapes = [_npy_rows(layout.embeddings(shard, kind)) for kind in ("image", "text")]
    except (OSError, ValueError) as err:
        return f"sidecar unreadable: {err}"
    if not (ids == shapes[0] == shapes[1] == stats["rows"] == rows):
        return f"row counts differ: shard {rows}, ids {ids}, image {shapes[0]}, text {shapes[1]}"
    return None


def _npy_rows(url: str) -> int:
    """Rows of a 2-D ``.npy`` file, checking from its header and size that the data is all there."""
    with open_input(url) as f:
        major, _ = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(f)
        expected = f.tell() + int(np.prod(shape)) * dtype.itemsize
        f.seek(0, 2)
        if f.tell() < expected:
            raise ValueError(f"{url}: truncated ({f.tell()} of {expected} bytes)")
    return int(shape[0])


def invalidate_bad_sidecars(build: Build, shards: list[str]) -> list[str]:
    """Drop the marker of every finished shard whose sidecars cannot be used, so the harness redoes it."""
    redo = []
    for shard in shards:
        if read_marker(build.layout.stage_dir("embed"), shard) is None:
            continue
        problem = check_sidecars(build.layout, shard, build.recipe.embed, _ok_rows(build.layout, shard))
        if problem:
            log.warning("embed shard %s: %s; recomputing", shard, problem)
            fs, path = url_to_fs(marker_path(build.layout.stage_dir("embed"), shard))
            fs.rm_file(path)
            redo.append(shard)
    return redo


def _ok_rows(layout: BuildLayout, shard: str) -> int:
    status = read_parquet(layout.unit_file("download", shard), columns=["status"])["status"]
    return int(pc.sum(pc.equal(status, schema.STATUS_OK)).as_py() or 0)
