"""Embed stage: open_clip image and text embeddings per download shard, written once as sidecars.

Per download shard ``NNNNN`` the stage writes, in ``<build>/embed/``:
``NNNNN.ids.parquet`` (sample_id, key, clip_score; the row order of the sidecars), ``NNNNN.image.npy`` and
``NNNNN.text.npy`` (L2-normalised float16, one row per id) and the marker ``NNNNN.done.json`` (model id,
rows, dim). Rows are the shard's downloaded images in key order. JPEG decoding and preprocessing run in
DataLoader worker processes so the model does not wait on them.

A sidecar whose files are missing, truncated, of another row count or of another model than the recipe's is
detected by :func:`check_sidecars` and recomputed; it is never used as is.
"""

from __future__ import annotations

import io
import logging
import multiprocessing
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from pipeline.clip_model import load_clip
from pipeline.config import EmbedConfig
from pipeline.download import shard_name
from pipeline.io import read_json
from pipeline.stage import StageDir, run_shard

log = logging.getLogger(__name__)


class EmbedError(RuntimeError):
    """A shard's images cannot be embedded (a kept row's image is missing from its tar, ...)."""


class _Images(Dataset):
    """JPEG bytes -> preprocessed tensors, in DataLoader workers."""

    def __init__(self, blobs: list[bytes], preprocess: Any) -> None:
        self.blobs, self.preprocess = blobs, preprocess

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, i: int) -> torch.Tensor:
        with Image.open(io.BytesIO(self.blobs[i])) as img:
            return self.preprocess(img.convert("RGB"))


def shard_rows(download_dir: Path, shard_id: int) -> pa.Table:
    """The shard's downloaded rows (sample_id, key, caption) in key order."""
    columns = ["sample_id", "key", "caption", "status"]
    table = pq.read_table(download_dir / f"{shard_name(shard_id)}.parquet", columns=columns)
    ok = table.filter(pc.equal(table["status"], "success")).drop_columns(["status"])
    return ok.sort_by("key")


def read_images(tar_path: Path, keys: list[str], ext: str = "jpg") -> list[bytes]:
    wanted = {f"{k}.{ext}": i for i, k in enumerate(keys)}
    blobs: list[bytes | None] = [None] * len(keys)
    with tarfile.open(tar_path) as tar:
        for member in tar:
            i = wanted.get(member.name)
            if i is not None:
                blobs[i] = tar.extractfile(member).read()
    missing = [keys[i] for i, b in enumerate(blobs) if b is None]
    if missing:
        raise EmbedError(f"{tar_path}: {len(missing)} downloaded rows have no image in the tar, e.g. key {missing[0]}")
    return blobs  # type: ignore[return-value]


@torch.no_grad()
def embed_batches(config: EmbedConfig, blobs: list[bytes], captions: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """L2-normalised image and text embeddings (float32), one row per input."""
    model, preprocess, tokenizer = load_clip(config)
    device = next(model.parameters()).device
    if config.threads:
        torch.set_num_threads(config.threads)
    workers = config.workers
    if workers and multiprocessing.current_process().daemon:
        # e.g. a Dask worker started with its default daemon=True: it may not start child processes.
        log.warning("embed: this process is a daemon, decoding in the main process (workers=0); start Dask "
                    "workers with DASK_DISTRIBUTED__WORKER__DAEMON=False to decode in parallel")  # fmt: skip
        workers = 0
    loader = DataLoader(
        _Images(blobs, preprocess),
        batch_size=config.batch_size,
        num_workers=workers,
        persistent_workers=False,
        pin_memory=device.type == "cuda",
    )
    autocast = torch.autocast(device.type, enabled=device.type == "cuda")
    images = []
    with autocast:
        for batch in loader:
            images.append(model.encode_image(batch.to(device, non_blocking=True), normalize=True).float().cpu())
        texts = [
            model.encode_text(tokenizer(captions[i : i + config.batch_size]).to(device), normalize=True).float().cpu()
            for i in range(0, len(captions), config.batch_size)
        ]
    dim = int(model.text_projection.shape[-1]) if hasattr(model, "text_projection") else None
    empty = np.zeros((0, dim or 0), np.float32)
    return (torch.cat(images).numpy() if images else empty), (torch.cat(texts).numpy() if texts else empty)


def check_sidecars(embed_dir: Path, shard_id: int, config: EmbedConfig, rows: int) -> str | None:
    """Why this shard's finished sidecars cannot be used (None when they can)."""
    name = shard_name(shard_id)
    stage = StageDir(embed_dir)
    if not stage.is_done(name):
        return "not embedded yet"
    stats = read_json(stage.marker(name))["stats"]
    if stats.get("model") != config.model_id:
        return f"embedded with {stats.get('model')!r}, the recipe asks for {config.model_id!r}"
    try:
        ids = pq.read_metadata(embed_dir / f"{name}.ids.parquet").num_rows
        image = np.load(embed_dir / f"{name}.image.npy", mmap_mode="r")
        text = np.load(embed_dir / f"{name}.text.npy", mmap_mode="r")
    except (OSError, ValueError) as err:
        return f"sidecar unreadable: {err}"
    if not (ids == image.shape[0] == text.shape[0] == stats["rows"] == rows):
        return f"row counts differ: shard {rows}, ids {ids}, image {image.shape[0]}, text {text.shape[0]}"
    return None


def embed_shard(build_dir: Path, shard_id: int, config: EmbedConfig, image_ext: str = "jpg") -> dict[str, Any]:
    """Embed one downloaded shard (skipped when valid sidecars exist; recomputed when they are not)."""
    download_dir, embed_dir = build_dir / "download", build_dir / "embed"
    name = shard_name(shard_id)
    rows = shard_rows(download_dir, shard_id)
    problem = check_sidecars(embed_dir, shard_id, config, rows.num_rows)
    if problem and problem != "not embedded yet":
        log.warning("embed shard %s: %s; recomputing", name, problem)
        StageDir(embed_dir).marker(name).unlink()

    def work(tmp: Path) -> dict[str, Any]:
        keys, captions = rows["key"].to_pylist(), [c or "" for c in rows["caption"].to_pylist()]
        blobs = read_images(download_dir / f"{name}.tar", keys, image_ext)
        image, text = embed_batches(config, blobs, captions)
        scores = (image * text).sum(axis=1) if len(keys) else np.zeros(0, np.float32)
        np.save(tmp / f"{name}.image.npy", image.astype(np.float16))
        np.save(tmp / f"{name}.text.npy", text.astype(np.float16))
        ids = rows.select(["sample_id", "key"]).append_column("clip_score", pa.array(scores, pa.float32()))
        pq.write_table(ids, tmp / f"{name}.ids.parquet")
        return {"rows": len(keys), "model": config.model_id, "dim": int(image.shape[1]) if len(keys) else None}

    return run_shard(StageDir(embed_dir), name, work, {"stage": "embed", "config": vars(config).copy()})


def scores_table(build_dir: Path, shard_ids: list[int], config: EmbedConfig) -> pa.Table:
    """sample_id -> clip_score for every embedded row; refuses sidecars that do not match (never uses them)."""
    tables = []
    for shard_id in shard_ids:
        rows = shard_rows(build_dir / "download", shard_id).num_rows
        problem = check_sidecars(build_dir / "embed", shard_id, config, rows)
        if problem:
            raise EmbedError(f"embed shard {shard_name(shard_id)}: {problem}; rerun the embed stage")
        tables.append(pq.read_table(build_dir / "embed" / f"{shard_name(shard_id)}.ids.parquet"))
    schema = pa.schema([("sample_id", pa.string()), ("key", pa.string()), ("clip_score", pa.float32())])
    return pa.concat_tables(tables) if tables else schema.empty_table()
