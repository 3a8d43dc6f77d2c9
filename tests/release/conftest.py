"""The ``release_dir`` fixture: a release folder in the publish contract, for the trainer tests.

The contract (what the publish stage writes and the tests in this folder rely on, nothing more)::

    <release>/shards/00000.tar, 00001.tar, ...   webdataset tars; sample <key>.jpg, <key>.txt, <key>.json,
                                                 key = 9-digit global position, members in key order
    <release>/sizes.json                         {"00000.tar": 8, ...}: samples per tar, keyed by its file name
    <release>/shards/sizes.json                  the same; open_clip_train's get_dataset_size reads sizes.json from
                                                 the directory of the first --train-data shard, not the release's
    <release>/manifest.parquet                   one row per released copy, RELEASE_SCHEMA; shard relative to
                                                 <release>; keep = true where the bytes are in the shards

The fixture gives the demo build's release and a small synthetic one (random JPEGs, one upsampled copy, one
URL-only row), so every test runs on both.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.core.schema import RELEASE_SCHEMA, sample_id_for

N_SHARDS = 3
PER_SHARD = 8
UPSAMPLED = 5  # the last slot of the last shard is a second copy of this sample
COLOURS = ("red", "green", "yellow", "purple")


def _jpeg(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o444
    tar.addfile(info, io.BytesIO(data))


def write_release(root: Path, seed: int = 0) -> Path:
    """Write a synthetic release under ``root`` (see the module docstring) and return ``root``."""
    rng = np.random.default_rng(seed)
    (root / "shards").mkdir(parents=True, exist_ok=True)
    n = N_SHARDS * PER_SHARD
    originals: dict[int, tuple[bytes, str, dict]] = {}  # sample number -> its bytes, caption and columns
    rows, sizes = [], {}
    for s in range(N_SHARDS):
        shard = f"shards/{s:05d}.tar"
        with tarfile.open(root / shard, "w") as tar:
            for position in range(s * PER_SHARD, (s + 1) * PER_SHARD):
                key = f"{position:09d}"
                copy, number = (1, UPSAMPLED) if position == n - 1 else (0, position)
                if number not in originals:
                    colour = COLOURS[number % len(COLOURS)]
                    caption = f"a photo of a {colour} leaf, number {number}."
                    originals[number] = (_jpeg(rng), caption, {
                        "sample_id": sample_id_for("synthetic", str(number)), "domain": "plant",
                        "source": "synthetic", "source_record_id": str(number),
                        "url": f"https://example.org/img/{number}.jpg", "caption": caption, "caption_kind": "dalip",
                        "caption_variants": [("dalip", caption), ("original", f"{colour} leaf {number}")],
                        "scientific_name": f"Plantus {colour}", "license": "cc-by-4.0",
                        "attribution": f"(c) tester {number}, CC BY 4.0",
                    })  # fmt: skip
                jpeg, caption, columns = originals[number]
                rows.append({**columns, "shard": shard, "key": key, "keep": True, "copy": copy})
                meta = {"key": key, "sample_id": columns["sample_id"], "copy": copy, "license": columns["license"]}
                _add(tar, f"{key}.jpg", jpeg)
                _add(tar, f"{key}.txt", caption.encode())
                _add(tar, f"{key}.json", json.dumps(meta).encode())
        sizes[Path(shard).name] = PER_SHARD
    # A row whose license forbids redistribution: in the manifest as a URL, not in the shards.
    rows.append({
        "sample_id": sample_id_for("synthetic", "url-only"), "domain": "plant", "source": "synthetic",
        "url": "https://example.org/img/url-only.jpg", "caption": "a photo of a leaf kept as a link.",
        "license": "cc-by-nc-nd-4.0", "shard": None, "key": None, "keep": False, "copy": 0,
    })  # fmt: skip
    pq.write_table(pa.Table.from_pylist(rows, schema=RELEASE_SCHEMA), root / "manifest.parquet")
    for path in (root / "sizes.json", root / "shards" / "sizes.json"):
        path.write_text(json.dumps(sizes, indent=1))
    return root


@pytest.fixture(scope="session", params=["demo", "synthetic"])
def release_dir(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A release folder in the publish contract (read-only for the tests): the demo build's own release, and a
    synthetic one with the cases the demo lacks (an upsampled copy, a URL-only row)."""
    if request.param == "demo":
        return request.getfixturevalue("demo_build") / "release"
    return write_release(tmp_path_factory.mktemp("release") / "release")
