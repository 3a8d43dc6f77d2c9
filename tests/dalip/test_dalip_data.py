"""The manifest reader and the shard stream: selection, captions, errors, corrupt images, splits, seeds."""

from __future__ import annotations

import itertools
from pathlib import Path

import fsspec
import pyarrow.parquet as pq
import pytest
import torch
from torchvision.transforms.functional import pil_to_tensor

from dalip import data
from dalip.data import ShardStream, make_loader, read_manifest
from pipeline.core.schema import MANIFEST_SCHEMA
from tests.dalip.conftest import write_dataset


def _caption_of_index(name: str, i: int, rng) -> str:
    return f"sample {i} is {name}"


def _texts(batches) -> list[str]:
    return [t for b in batches for t in b["text"]]


def _stream(selection, batch_size: int = 4, **kwargs) -> ShardStream:
    # Identity tokenizer: batches carry caption strings, so tests can see which samples they hold.
    return ShardStream(selection, pil_to_tensor, lambda texts: list(texts), batch_size, **kwargs)


def test_column_names_are_the_manifest_schema_names() -> None:
    names = set(MANIFEST_SCHEMA.names)
    constants = [v for k, v in vars(data).items() if k.startswith("COL_")]
    assert len(constants) >= 9
    assert set(constants) <= names, set(constants) - names
    assert MANIFEST_SCHEMA.field(data.COL_CAPTION_VARIANTS).type.key_type == "string"


def test_read_manifest_keeps_kept_rows_and_resolves_shards(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path, n_shards=3, per_shard=5, dropped=(1, 7), captions=_caption_of_index)
    sel = read_manifest(manifest)
    assert sel.num_samples == 13
    assert sel.shards == [str(tmp_path / f"shards/{s:05d}.tar") for s in range(3)]
    assert "sample 1 is" not in " ".join(sel.captions.values())
    assert sel.captions[(str(tmp_path / "shards/00000.tar"), "000000000")] == "sample 0 is crimson striped"
    variant = read_manifest(manifest, caption="dalip")
    assert variant.captions[(str(tmp_path / "shards/00000.tar"), "000000000")] == "crimson striped, variant."
    assert variant.caption_fallbacks == 0
    fallback = read_manifest(manifest, caption="bioclip_scientific")  # absent in every row: falls back, counted
    assert fallback.caption_fallbacks == 13 and set(fallback.captions.values()) == set(sel.captions.values())


def test_manifest_errors_are_clear(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path / "a", n_shards=2, per_shard=3)
    table = pq.read_table(manifest)
    pq.write_table(table.drop_columns(["keep"]), tmp_path / "nokeep.parquet")
    with pytest.raises(ValueError, match=r"nokeep.parquet: missing required column\(s\) \['keep'\]"):
        read_manifest(tmp_path / "nokeep.parquet")
    write_dataset(tmp_path / "b", n_shards=1, per_shard=3, dropped=(0, 1, 2))
    with pytest.raises(ValueError, match="no row has keep = true"):
        read_manifest(tmp_path / "b" / "manifest.parquet")
    (tmp_path / "a" / "shards" / "00001.tar").unlink()
    with pytest.raises(FileNotFoundError, match=r"shard .*00001.tar \(named in manifest .*manifest.parquet\)"):
        read_manifest(manifest)
    with pytest.raises(FileNotFoundError, match="no Parquet file"):
        read_manifest(tmp_path / "missing.parquet")


def test_manifest_and_shards_through_an_fsspec_url(tmp_path: Path) -> None:
    local = write_dataset(tmp_path, n_shards=2, per_shard=4, captions=_caption_of_index)
    fs = fsspec.filesystem("memory")
    for path in [local, *sorted((tmp_path / "shards").iterdir())]:
        fs.pipe(f"/plantmix/{path.relative_to(tmp_path)}", path.read_bytes())
    sel = read_manifest("memory://plantmix/manifest.parquet")
    assert [fsspec.core.url_to_fs(u)[1] for u in sel.shards] == [f"/plantmix/shards/0000{s}.tar" for s in (0, 1)]
    assert all(u.startswith("memory://") for u in sel.shards)
    batches = list(itertools.islice(_stream(sel, batch_size=4), 2))
    assert sorted(_texts(batches)) == sorted(sel.captions.values())


def test_captions_come_from_the_manifest_variant_and_corrupt_images_are_skipped(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path, n_shards=1, per_shard=10, corrupt=(2, 5), dropped=(7,))
    sel = read_manifest(manifest, caption="dalip")
    batches = list(itertools.islice(_stream(sel, batch_size=7, shuffle_buffer=1), 1))
    assert all(t.endswith(", variant.") for t in _texts(batches))
    assert batches[0]["image"].shape == (7, 3, 32, 32)
    stats = batches[0]["stats"]
    assert stats.corrupt == 2 and stats.unselected == 1
    assert any("000000002" in k for k in stats.corrupt_keys)


def test_a_shard_vanishing_mid_run_is_counted_not_fatal(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path, n_shards=2, per_shard=4, captions=_caption_of_index)
    sel = read_manifest(manifest)
    (tmp_path / "shards" / "00001.tar").unlink()
    batch = next(iter(_stream(sel, batch_size=6, shuffle_buffer=1)))
    assert batch["stats"].shard_errors >= 1 and len(batch["text"]) == 6


@pytest.mark.parametrize(("n_shards", "workers"), [(4, 2), (1, 2)])  # split by shard / by sample position
def test_ranks_and_workers_see_disjoint_samples(tmp_path: Path, n_shards: int, workers: int) -> None:
    manifest = write_dataset(tmp_path, n_shards=n_shards, per_shard=32 // n_shards, captions=_caption_of_index)
    sel = read_manifest(manifest)
    seen = []
    for rank in range(2):
        loader = make_loader(_stream(sel, batch_size=4, rank=rank, world_size=2, shuffle_buffer=8), workers)
        seen.append(_texts(itertools.islice(loader, 4)))  # 16 samples: this rank's share of one pass
    assert len(set(seen[0])) == len(seen[0]) == 16 and len(set(seen[1])) == 16
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == set(sel.captions.values())


def test_seeded_order_epochs_and_exact_skip(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path, n_shards=3, per_shard=12, captions=_caption_of_index)
    sel = read_manifest(manifest)

    def batches(seed: int, epoch: int = 0, skip: int = 0, n: int = 6) -> list[dict]:
        stream = _stream(sel, batch_size=3, seed=seed)
        stream.set_epoch(epoch, skip)
        return list(itertools.islice(make_loader(stream, workers=2), n - skip))

    first = batches(seed=1)
    assert _texts(first) == _texts(batches(seed=1))
    assert _texts(first) != _texts(batches(seed=2))
    assert _texts(first) != _texts(batches(seed=1, epoch=1))
    resumed = batches(seed=1, skip=3)
    assert _texts(resumed) == _texts(first[3:])
    for a, b in zip(resumed, first[3:], strict=True):
        assert torch.equal(a["image"], b["image"])
