"""Fixtures for the DALIP tests: tiny synthetic webdataset shards (img2dataset layout) and a PlantMix manifest."""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from pipeline.core.schema import MANIFEST_SCHEMA, sample_id_for

COLOURS = {
    "crimson": (200, 20, 40),
    "orange": (240, 140, 20),
    "olive": (120, 130, 20),
    "teal": (20, 140, 140),
    "violet": (130, 40, 200),
}
PATTERNS = ("striped", "banded", "checkered", "spotted")


def _jpeg(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array.astype(np.uint8)).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def pattern_image(colour: str, pattern: str, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A ``size x size`` RGB image: a class colour drawn in a class pattern over a noisy random background."""
    yy, xx = np.mgrid[0:size, 0:size]
    period = int(rng.integers(5, 8))
    phase = int(rng.integers(0, period))
    mask = {
        "striped": (xx + phase) % period < period // 2,
        "banded": (yy + phase) % period < period // 2,
        "checkered": ((xx + phase) // (period // 2 + 1) + (yy + phase) // (period // 2 + 1)) % 2 == 0,
        "spotted": ((xx + phase) % period - period / 2) ** 2 + ((yy + phase) % period - period / 2) ** 2 < 3,
    }[pattern]
    background = rng.integers(40, 215, size=3)
    img = np.empty((size, size, 3), dtype=np.float32)
    img[:] = background
    img[mask] = COLOURS[colour]
    img += rng.normal(0, 12, size=img.shape)
    return img.clip(0, 255)


def class_names() -> list[str]:
    return [f"{c} {p}" for c in COLOURS for p in PATTERNS]


def write_dataset(
    root: Path,
    n_shards: int = 2,
    per_shard: int = 16,
    seed: int = 0,
    corrupt: tuple[int, ...] = (),
    dropped: tuple[int, ...] = (),
    captions: Callable[[str, int, np.random.Generator], str] | None = None,
    manifest_name: str = "manifest.parquet",
) -> Path:
    """Write ``n_shards`` tars under ``root/shards`` and a manifest at ``root/manifest_name``; return its path.

    Sample ``i`` is class ``i % n_classes``; indices in ``corrupt`` get truncated JPEG bytes, those in
    ``dropped`` get ``keep = false``. Captions come from ``captions(class_name, i, rng)`` (default: the class
    name in a sentence); the manifest also carries a ``dalip`` caption variant ``"{class}, variant."``.
    """
    rng = np.random.default_rng(seed)
    names = class_names()
    caption_fn = captions or (lambda name, i, r: f"a photo of a {name} leaf.")
    (root / "shards").mkdir(parents=True, exist_ok=True)
    rows = []
    i = 0
    for s in range(n_shards):
        rel = f"shards/{s:05d}.tar"
        with wds.TarWriter(str(root / rel)) as sink:
            for _ in range(per_shard):
                name = names[i % len(names)]
                colour, pattern = name.split()
                data = _jpeg(pattern_image(colour, pattern, rng))
                if i in corrupt:
                    data = data[: len(data) // 3]
                key = f"{s:05d}{i:04d}"
                caption = caption_fn(name, i, rng)
                meta = {"key": key, "caption": caption, "status": "success"}
                sink.write({"__key__": key, "jpg": data, "txt": caption, "json": json.dumps(meta)})
                rows.append(
                    {
                        "sample_id": sample_id_for("synthetic", str(i)),
                        "source": "synthetic",
                        "domain": "plant",
                        "caption": caption,
                        "caption_kind": "template",
                        "caption_variants": [("dalip", f"{name}, variant."), ("original", caption)],
                        "scientific_name": name,
                        "status": "ok",
                        "shard": rel,
                        "key": key,
                        "keep": i not in dropped,
                        "drop_reason": "test_drop" if i in dropped else None,
                    }
                )
                i += 1
    table = pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA)
    path = root / manifest_name
    pq.write_table(table, path)
    return path


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    """Two shards of 16 samples each, no corrupt or dropped rows."""
    return write_dataset(tmp_path / "data")


@pytest.fixture(scope="session")
def tiny_model_name() -> str:
    from dalip.tiny import register_tiny_model

    return register_tiny_model()
