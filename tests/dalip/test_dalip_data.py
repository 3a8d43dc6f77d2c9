"""The manifest reader and the shard stream: selection, captions, errors, corrupt images, splits, seeds."""

from __future__ import annotations

import gc
import itertools
import pickle
from pathlib import Path

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torchvision.transforms.functional import pil_to_tensor

from dalip import caption_index, data
from dalip.data import ShardStream, make_loader, read_manifest
from pipeline.core.schema import MANIFEST_SCHEMA
from tests.dalip.conftest import write_dataset


def _caption_of_index(name: str, i: int, rng) -> str:
    return f"sample {i} is {name}"


def _texts(batches) -> list[str]:
    return [t for b in batches for t in b["text"]]


def _captions(selection) -> dict[tuple[str, str], str]:
    """Every kept row's caption, read from the index shard by shard."""
    return {(url, key): text for url in selection.shards for key, text in selection.index.captions(url).items()}


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
    captions = _captions(sel)
    assert len(captions) == 13 and "sample 1 is" not in " ".join(captions.values())
    assert captions[(str(tmp_path / "shards/00000.tar"), "000000000")] == "sample 0 is crimson striped"
    first = {"__url__": str(tmp_path / "shards/00000.tar"), "__key__": "000000000"}
    assert sel.caption_of(first) == "sample 0 is crimson striped"
    assert sel.caption_of({**first, "__key__": "000000001"}) is None  # dropped row
    assert sel.caption_of({"__error__": "unreadable"}) is None
    variant = read_manifest(manifest, caption="dalip")
    assert variant.caption_of(first) == "crimson striped, variant."
    assert variant.caption_fallbacks == 0
    fallback = read_manifest(manifest, caption="bioclip_scientific")  # absent in every row: falls back, counted
    assert fallback.caption_fallbacks == 13 and _captions(fallback) == captions


def test_the_caption_index_spans_row_groups_and_batches_and_holds_nothing_per_row(tmp_path, monkeypatch) -> None:
    # Tiny Arrow batches and row groups: shards split across several of each, rows of one batch in several shards.
    monkeypatch.setattr(data, "BATCH_ROWS", 7)
    monkeypatch.setattr(caption_index, "ROW_GROUP_ROWS", 5)
    manifest = write_dataset(tmp_path, n_shards=4, per_shard=12, dropped=(3, 20, 21), captions=_caption_of_index)
    rows = pq.read_table(manifest).to_pylist()
    rows = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))]  # shards interleaved in the file
    pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), manifest)
    sel = read_manifest(manifest, index_folder=tmp_path / "index")
    expected = {(str(tmp_path / r["shard"]), r["key"]): r["caption"] for r in rows if r["keep"]}
    assert _captions(sel) == expected and sel.num_samples == 45
    assert pq.ParquetFile(sel.index.path).metadata.num_row_groups == 9
    assert all(first < last for first, last in sel.index.row_groups.values())  # every shard spans row groups
    # What goes to each loader worker has no per-row part: its size does not grow with the rows.
    small = read_manifest(write_dataset(tmp_path / "small", n_shards=4, per_shard=2), index_folder=tmp_path / "index")
    assert len(pickle.dumps(sel)) < len(pickle.dumps(small)) + 400


def test_duplicate_rows_count_once_and_the_index_folder_goes_with_the_selection(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path, n_shards=2, per_shard=3)
    table = pq.read_table(manifest)
    pq.write_table(pa.concat_tables([table, table.slice(0, 2)]), tmp_path / "twice.parquet")
    sel = read_manifest(tmp_path / "twice.parquet", index_folder=tmp_path / "index")
    assert sel.num_samples == 6 and len(_captions(sel)) == 6
    folder = Path(sel.index.path).parent
    assert folder.parent == tmp_path / "index" and folder.is_dir()
    del sel
    gc.collect()
    assert not folder.exists()


def test_a_kept_row_without_a_key_names_its_file_and_sample(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path, n_shards=1, per_shard=3)
    table = pq.read_table(manifest)
    keys = table["key"].to_pylist()
    keys[1] = ""
    pq.write_table(table.set_column(table.schema.get_field_index("key"), "key", pa.array(keys)), manifest)
    with pytest.raises(ValueError, match=rf"manifest .*manifest.parquet: kept row sample_id={table['sample_id'][1]} "):
        read_manifest(manifest)


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
    assert sorted(_texts(batches)) == sorted(_captions(sel).values())


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
    assert set(seen[0]) | set(seen[1]) == set(_captions(sel).values())


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
