"""The demo build's release: the exact selection packed byte for byte, described, credited, reproducible."""

from __future__ import annotations

import csv
import hashlib
import json
import tarfile
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest

from pipeline.core.config import load_recipe
from pipeline.core.harness import Build
from pipeline.query import sql
from pipeline.runner import run_stage
from pipeline.stages import stage_named
from pipeline.stages.publish import shard_writer
from tests.conftest import DEMO_RECIPE, copy_build


def tar_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers()}


def digests(release: Path) -> dict[str, str]:
    files = sorted(release.glob("shards/*.tar")) + [release / "manifest.parquet"]
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


def demo_build_at(root: Path) -> Build:
    recipe = load_recipe(DEMO_RECIPE)
    recipe.output_dir = str(root)
    return Build.of(recipe)


def test_the_release_holds_exactly_the_selection_in_equal_shards(demo_build):
    release = demo_build / "release"
    info = json.loads((release / "release.json").read_text())
    assert info["target"] == {"total": 120, "plant": 90, "general": 30} and info["general_share"] == 0.25
    assert info["counts"]["by_domain"] == {"general": 30, "plant": 90} and info["counts"]["packed"] == 120
    sizes = json.loads((release / "sizes.json").read_text())
    assert sizes == json.loads((release / "shards" / "sizes.json").read_text())
    tars = sorted(release.glob("shards/*.tar"))
    assert [t.name for t in tars] == list(sizes) == ["00000.tar", "00001.tar", "00002.tar", "00003.tar"]
    for tar in tars:  # sizes.json says what the tars hold; every shard but the last is full
        keys = {name.split(".")[0] for name in tar_members(tar)}
        assert len(keys) == sizes[tar.name]
    assert list(sizes.values()) == [32, 32, 32, 24]
    build = pq.read_table(demo_build / "manifest.parquet").to_pylist()
    selected = {r["sample_id"] for r in build if r["selected"]}
    released = pq.read_table(release / "manifest.parquet").to_pylist()
    assert {r["sample_id"] for r in released} == selected and len(released) == 120
    assert all(r["keep"] for r in released)
    assert {r["domain"] for r in build if r["selected"]} == {"plant", "general"}
    assert all(r["keep"] for r in build if r["selected"])  # only kept rows are ever sampled
    # Shuffled across sources: the first shard is not one source.
    first = [r["source"] for r in released if r["shard"] == "shards/00000.tar"]
    assert len(set(first)) == 3


def test_every_released_image_is_its_download_shards_bytes_with_caption_and_metadata(demo_build):
    release = demo_build / "release"
    build = {r["sample_id"]: r for r in pq.read_table(demo_build / "manifest.parquet").to_pylist()}
    downloads: dict[str, dict[str, bytes]] = {}
    shards: dict[str, dict[str, bytes]] = {}
    for row in pq.read_table(release / "manifest.parquet").to_pylist():
        source = build[row["sample_id"]]
        download = downloads.setdefault(source["shard"], tar_members(demo_build / source["shard"]))
        shard = shards.setdefault(row["shard"], tar_members(release / row["shard"]))
        assert shard[f"{row['key']}.jpg"] == download[f"{source['key']}.jpg"]  # copied, not re-encoded
        assert shard[f"{row['key']}.txt"].decode() == source["caption"] == row["caption"]
        meta = json.loads(shard[f"{row['key']}.json"])
        assert meta["sample_id"] == row["sample_id"] and meta["license"] == source["license"]
        assert meta["attribution"] == source["attribution"] and meta["rights_holder"] == source["rights_holder"]
        assert meta["clip_score"] == pytest.approx(source["clip_score"]) and meta["source"] == source["source"]
        assert source["release_shard"] == row["shard"] and source["release_key"] == row["key"]


def test_unselected_kept_rows_say_why_and_counts_add_up(demo_build):
    con = duckdb.connect()
    rows = con.sql(
        f"SELECT keep, selected, sample_reason, count(*) FROM '{demo_build}/manifest.parquet' GROUP BY ALL"
    ).fetchall()
    counts = {(k, s, r): n for k, s, r, n in rows}
    assert counts[(True, True, None)] == 120
    assert counts[(True, False, "license_excluded")] == 7  # the sample's CC BY-NC-ND photos
    assert counts[(True, False, "over_species_cap")] == 2  # the species with 8 kept images, capped at 6
    assert sum(n for (k, s, r), n in counts.items() if k) == 157  # every kept row: selected or a reason
    assert all(r is None and not s for (k, s, r), n in counts.items() if not k)
    view = sql.connect(str(demo_build)).sql("SELECT domain, outcome, rows FROM sampling").fetchall()
    assert ("plant", "(selected)", 90) in view and ("general", "(selected)", 30) in view
    assert sum(n for _, _, n in view) == 157


def test_attribution_credits_every_cc_by_image_and_the_card_tells_the_story(demo_build):
    release = demo_build / "release"
    released = pq.read_table(release / "manifest.parquet").to_pylist()
    with open(release / "ATTRIBUTION.csv", newline="") as f:
        credited = {row["sample_id"]: row for row in csv.DictReader(f)}
    cc_by = [r for r in released if r["license"].startswith("cc-by")]
    assert cc_by and {r["sample_id"] for r in cc_by} <= set(credited)
    for r in cc_by:
        assert credited[r["sample_id"]]["attribution"] == r["attribution"]
        assert credited[r["sample_id"]]["page_url"] == (r["page_url"] or "")
    card = (release / "RELEASE.md").read_text()
    for text in ("| candidates | 200 |", "license_excluded", "over_species_cap", "plots/funnel.png", "dalip.train",
                 "open_clip_train.main", "{00000..00003}", "--train-num-samples 120",
                 json.loads((release / "release.json").read_text())["recipe_sha256"]):  # fmt: skip
        assert text in card, text
    for plot in ("funnel.png", "species_long_tail.png", "clip_scores.png"):
        assert (release / "plots" / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_rerun_gives_byte_identical_shards_and_manifest(demo_build, tmp_path):
    root = copy_build(demo_build, tmp_path / "build")
    before = digests(root / "release")
    for folder in ("sample", "publish", "release"):
        import shutil

        shutil.rmtree(root / folder)
    build = demo_build_at(root)
    for name in ("sample", "publish"):
        run_stage(stage_named(name), build)
    assert digests(root / "release") == before


def test_a_publish_killed_midway_never_leaves_a_half_release_and_the_rerun_completes_it(
    demo_build, tmp_path, monkeypatch
):
    root = copy_build(demo_build, tmp_path / "build")
    before = digests(root / "release")
    import shutil

    shutil.rmtree(root / "publish")
    shutil.rmtree(root / "release")
    build = demo_build_at(root)
    written = []
    real = shard_writer.write_shard

    def dies_on_the_third_shard(rows, build_root, dest):
        if len(written) == 2:
            raise KeyboardInterrupt("killed")
        written.append(dest)
        return real(rows, build_root, dest)

    monkeypatch.setattr("pipeline.stages.publish.write_shard", dies_on_the_third_shard)
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage_named("publish"), build)
    assert not (root / "release").exists()
    assert len(list((root / "publish").glob("*.tar"))) == 2  # the finished shards are kept, marked
    monkeypatch.setattr("pipeline.stages.publish.write_shard", real)

    def dies_while_writing_the_card(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr("pipeline.stages.publish.write_attribution", dies_while_writing_the_card)
    with pytest.raises(KeyboardInterrupt):
        run_stage(stage_named("publish"), build)
    assert not (root / "release").exists() and not list(root.glob(".release.tmp-*"))
    monkeypatch.undo()
    run_stage(stage_named("publish"), build)
    assert digests(root / "release") == before
    assert (root / "release" / "release.json").exists()
