"""Crawl stage: every input row becomes one candidate row, repeats are rejected with the row they repeat; an
updated export or changed options are refused, never reused; sources whose names share a prefix crawl side by side."""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import pyarrow.parquet as pq
import pytest

from pipeline.core.config import Recipe, SourceSpec
from pipeline.core.harness import Build, StageMismatch, run_unit
from pipeline.stages import crawl


def crawl_source(recipe: Recipe) -> dict:
    return run_unit(crawl.CrawlStage(), Build.of(recipe), recipe.sources[0].name)


def pool_recipe(tmp_path, rows: list[tuple[str, str, str]], caption_style: str = "dalip") -> Recipe:
    pool = tmp_path / "pool.csv"
    pool.write_text("uid,url,caption\n" + "".join(f"{u},{url},{c}\n" for u, url, c in rows))
    spec = SourceSpec("pool", "url_caption_pool", {"path": str(pool), "id_col": "uid"})
    return Recipe(name="t", output_dir=str(tmp_path / "build"), sources=[spec], caption_style=caption_style)


@pytest.mark.parametrize("batch_rows", [2, 50_000])
def test_every_row_once_and_repeats_rejected(tmp_path, monkeypatch, batch_rows):
    monkeypatch.setattr(crawl, "BATCH_ROWS", batch_rows)
    rows = [("a", "http://h/1.jpg", "one two"), ("b", "http://h/2.jpg", "three four"),
            ("a", "http://h/3.jpg", "five six"), ("c", "ftp://h/4.jpg", "seven eight"),
            ("d", "http://h/5.jpg", "x y")]  # fmt: skip
    recipe = pool_recipe(tmp_path, rows)
    record = crawl_source(recipe)
    table = pq.read_table(tmp_path / "build" / "crawl" / "pool.parquet").to_pylist()
    assert [r["input_row"] for r in table] == [1, 2, 3, 4, 5]  # input order, nothing skipped
    assert len({r["sample_id"] for r in table}) == 5
    assert [r["status"] for r in table] == ["pending", "pending", "rejected", "rejected", "pending"]
    assert "repeats row 1" in table[2]["error"] and "ftp" in table[3]["error"]
    assert record["stats"] == {"rows": 5, "status": {"pending": 3, "rejected": 2}}
    assert table[2]["sample_id"] != table[0]["sample_id"]  # a repeat gets an id of its own


def test_many_repeats_across_batches_keep_order_and_first_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(crawl, "BATCH_ROWS", 7)
    rows = [(f"id{i % 10}", f"http://h/{i}.jpg", "one two") for i in range(45)]  # ids 0-9 repeat 4 times more
    recipe = pool_recipe(tmp_path, rows)
    crawl_source(recipe)
    table = pq.read_table(tmp_path / "build" / "crawl" / "pool.parquet").to_pylist()
    assert [r["input_row"] for r in table] == list(range(1, 46))
    assert [r["status"] for r in table] == ["pending"] * 10 + ["rejected"] * 35
    assert all(f"repeats row {(r['input_row'] - 1) % 10 + 1} of" in r["error"] for r in table[10:])
    assert len({r["sample_id"] for r in table}) == 45


def crawled(tmp_path, source: str = "pool") -> list[dict]:
    return pq.read_table(tmp_path / "build" / "crawl" / f"{source}.parquet").to_pylist()


def test_a_changed_caption_style_is_not_silently_reused(tmp_path):
    recipe = pool_recipe(tmp_path, [("a", "http://h/1.jpg", "one two")])
    first = crawl_source(recipe)
    assert crawl_source(recipe) == first  # same recipe: reused
    other = pool_recipe(tmp_path, [("a", "http://h/1.jpg", "one two")], caption_style="bioclip_scientific")
    with pytest.raises(StageMismatch, match="other inputs or settings"):
        crawl_source(other)


def test_an_export_updated_in_place_is_refused_not_reused(tmp_path):
    recipe = pool_recipe(tmp_path, [("a", "http://h/1.jpg", "one two")])
    assert crawl_source(recipe)["stats"]["rows"] == 1
    with open(tmp_path / "pool.csv", "a") as f:  # the same file, one more row
        f.write("b,http://h/2.jpg,three four\n")
    with pytest.raises(StageMismatch, match="other inputs or settings"):
        crawl_source(recipe)
    assert [r["source_record_id"] for r in crawled(tmp_path)] == ["a"]  # the build is left as it was


def test_an_export_rewritten_with_the_same_size_is_refused(tmp_path):
    recipe = pool_recipe(tmp_path, [("a", "http://h/1.jpg", "one two")])
    crawl_source(recipe)
    pool = tmp_path / "pool.csv"
    pool.write_text(pool.read_text().replace("one two", "six ten"))
    stat = pool.stat()
    os.utime(pool, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # a later write, whatever the clock
    with pytest.raises(StageMismatch):
        crawl_source(recipe)
    recipe.output_dir = str(tmp_path / "new-build")  # a new export is a new build
    crawl_source(recipe)
    assert pq.read_table(tmp_path / "new-build" / "crawl" / "pool.parquet")["caption"].to_pylist() == ["six ten"]


def test_an_input_folder_counts_every_file_in_it(tmp_path):
    folder = tmp_path / "pool"
    folder.mkdir()
    (folder / "a.csv").write_text("uid,url,caption\na,http://h/1.jpg,one two\n")
    spec = SourceSpec("pool", "url_caption_pool", {"path": str(folder), "id_col": "uid"})
    before = crawl.input_state(spec)
    (folder / "b.csv").write_text("uid,url,caption\nb,http://h/2.jpg,three four\n")
    after = crawl.input_state(spec)
    assert before["path"]["files"] == 1 and after["path"]["files"] == 2 and before != after
    assert crawl.input_state(SourceSpec("pool", "url_caption_pool", {"path": str(tmp_path / "nope.csv")})) == {
        "path": {"missing": str(tmp_path / "nope.csv")}
    }


def test_sources_with_a_shared_name_prefix_crawl_side_by_side(tmp_path, monkeypatch):
    """``inat`` starts while ``inat-2023`` is mid-crawl; clearing inat's leftovers must not touch inat-2023's
    scratch folder (the old ``_tmp/inat-*`` glob removed it), and both crawl files come out whole."""
    names = ("inat-2023", "inat")
    specs = []
    for k, name in enumerate(names):
        pool = tmp_path / f"{name}.csv"
        pool.write_text("uid,url,caption\n" + "".join(f"{name}{i},http://h/{k}/{i}.jpg,cap {i}\n" for i in range(5)))
        specs.append(SourceSpec(name, "url_caption_pool", {"path": str(pool), "id_col": "uid"}))
    recipe = Recipe(name="t", output_dir=str(tmp_path / "build"), sources=specs)
    started = {name: threading.Event() for name in names}
    read_source_batches = crawl.read_source_batches

    def paced(adapter, options, ctx, batch_rows, part=None):
        started[options["name"]].set()
        if options["name"] == "inat-2023":  # hold the crawl open until inat has cleared its leftovers and begun
            assert started["inat"].wait(20)
        yield from read_source_batches(adapter, options, ctx, batch_rows, part=part)

    monkeypatch.setattr(crawl, "read_source_batches", paced)
    build, stage = Build.of(recipe), crawl.CrawlStage()

    def run(name: str) -> dict:
        if name == "inat":
            assert started["inat-2023"].wait(20)
        return run_unit(stage, build, name)

    with ThreadPoolExecutor(2) as pool:
        records = dict(zip(names, pool.map(run, names), strict=True))
    for name in names:
        assert records[name]["stats"] == {"rows": 5, "status": {"pending": 5}}
        assert [r["source_record_id"] for r in crawled(tmp_path, name)] == [f"{name}{i}" for i in range(5)]
    assert not (tmp_path / "build" / "crawl" / "_tmp").exists()


def test_a_pool_in_part_files_crawls_one_unit_per_file_then_joins_them_in_order(tmp_path, monkeypatch):
    """Three part files: three crawl_parts units (resumable each), one crawl file in file order, repeats across
    files rejected; the rows equal crawling the pool whole; a part changed after its crawl is refused."""
    from pipeline.runner import run_stage
    from pipeline.sources import pool as pool_adapter

    folder = tmp_path / "pool"
    folder.mkdir()
    for k in range(3):
        rows = "".join(f"id{k}-{i},http://h/{k}/{i}.jpg,cap {i}\n" for i in range(4))
        repeat = "id0-1,http://h/again.jpg,cap\n" if k == 2 else ""
        (folder / f"part-{k}.csv").write_text("uid,url,caption\n" + rows + repeat)
    spec = SourceSpec("pool", "url_caption_pool", {"path": str(folder), "id_col": "uid", "format": "csv"})
    recipe = Recipe(name="t", output_dir=str(tmp_path / "build"), sources=[spec])
    build = Build.of(recipe)
    parts_stage = crawl.CrawlPartsStage()
    assert parts_stage.plan(build) == ["pool.part-00000", "pool.part-00001", "pool.part-00002"]
    run_unit(parts_stage, build, "pool.part-00001")  # a worker finished one part; the rest run on a rerun
    first = (tmp_path / "build" / "crawl_parts" / "pool.part-00001.done.json").stat().st_mtime_ns
    run_stage(parts_stage, build)
    assert (tmp_path / "build" / "crawl_parts" / "pool.part-00001.done.json").stat().st_mtime_ns == first
    record = run_unit(crawl.CrawlStage(), build, "pool")
    joined = crawled(tmp_path)
    assert record["stats"] == {"rows": 13, "status": {"pending": 12, "rejected": 1}, "parts": 3}
    assert [r["input_file"].rsplit("/", 1)[1] for r in joined] == ["part-0.csv"] * 4 + ["part-1.csv"] * 4 + [
        "part-2.csv"
    ] * 5
    assert "repeats row 2 of" in joined[-1]["error"] and joined[-1]["error"].endswith("part-0.csv")

    monkeypatch.setattr(pool_adapter, "parts", lambda config: [])  # the same pool read whole, in one unit
    whole = Recipe(name="t", output_dir=str(tmp_path / "whole"), sources=[spec])
    run_unit(crawl.CrawlStage(), Build.of(whole), "pool")
    assert pq.read_table(tmp_path / "whole" / "crawl" / "pool.parquet").to_pylist() == joined
    monkeypatch.undo()

    (folder / "part-0.csv").write_text("uid,url,caption\nnew,http://h/new.jpg,cap\n")
    with pytest.raises(StageMismatch):
        run_unit(parts_stage, build, "pool.part-00000")


def crawl_in_parts(tmp_path, spec: SourceSpec, parts: int, early: int) -> tuple[Build, dict]:
    """Crawl ``spec`` as its ``parts`` crawl_parts units, unit ``early`` first (a worker finished it before the rerun,
    which must not redo it), then join them in the crawl stage; returns the build and the crawl unit's record."""
    from pipeline.runner import run_stage

    build = Build.of(Recipe(name="t", output_dir=str(tmp_path / "build"), sources=[spec]))
    stage = crawl.CrawlPartsStage()
    units = [f"{spec.name}.part-{k:05d}" for k in range(parts)]
    assert stage.plan(build) == units
    run_unit(stage, build, units[early])
    done = tmp_path / "build" / "crawl_parts" / f"{units[early]}.done.json"
    first = done.stat().st_mtime_ns
    run_stage(stage, build)
    assert done.stat().st_mtime_ns == first
    record = run_unit(crawl.CrawlStage(), build, spec.name)
    assert record["stats"]["parts"] == parts
    return build, record


def test_one_big_pool_file_with_chunk_rows_is_crawled_in_units_and_resumes_per_chunk(tmp_path):
    """chunk_rows cuts a single file into crawl_parts units; a unit done before a rerun is not redone; the joined
    crawl equals crawling the file whole, repeats across chunks included; a changed file is refused."""

    big = tmp_path / "cc12m.tsv"
    lines = [f"http://h/{i % 9}.jpg\tcaption {i}" for i in range(20)]  # URLs repeat across chunks
    big.write_text("\n".join(lines) + "\n")
    options = {"path": str(big), "columns": ["url", "caption"]}
    chunked = SourceSpec("cc12m", "url_caption_pool", {**options, "chunk_rows": 6})
    build, record = crawl_in_parts(tmp_path, chunked, parts=4, early=2)
    assert record["stats"]["rows"] == 20
    assert record["stats"]["status"] == {"pending": 9, "rejected": 11}  # 11 repeated URLs (same sample_id)

    whole = SourceSpec("cc12m", "url_caption_pool", options)
    run_unit(crawl.CrawlStage(), Build.of(Recipe(name="t", output_dir=str(tmp_path / "whole"), sources=[whole])),
             "cc12m")  # fmt: skip
    assert crawled(tmp_path, "cc12m") == pq.read_table(tmp_path / "whole" / "crawl" / "cc12m.parquet").to_pylist()

    big.write_text("\n".join(lines[:-1]) + "\nhttp://h/new.jpg\tchanged\n")
    with pytest.raises(StageMismatch):
        run_unit(crawl.CrawlPartsStage(), build, "cc12m.part-00000")


def test_an_inaturalist_export_in_partitions_crawls_one_unit_each_and_resumes(tmp_path):
    """partitions: 3 gives three crawl_parts units (resumable each) whose joined crawl holds the whole crawl's rows,
    the repeated record rejected as it is there; a changed common-names file, even outside the export folder, is
    refused, not reused."""
    from tests.sources.source_fixtures import INAT_TAXA, OBSERVATIONS, OBSERVERS, PHOTOS, TAXA, tsv

    folder = tmp_path / "inat"
    folder.mkdir()
    observations = [[f"o{i}", "7", "0", "0", "1", "13" if i % 3 else "14", "research", ""] for i in range(20)]
    photos = [[f"u{i}", str(100 + i), f"o{i % 20}", "7", "jpg", "CC-BY", "9", "9", "0"] for i in range(60)]
    tsv(folder / "photos.csv", PHOTOS, [*photos, photos[5]])  # the last row repeats row 6
    tsv(folder / "observations.csv", OBSERVATIONS, observations)
    tsv(folder / "taxa.csv", TAXA, INAT_TAXA)
    tsv(folder / "observers.csv", OBSERVERS, [["7", "jdoe", "Jane Doe"]])
    names = tmp_path / "names.csv"
    names.write_text("taxon_id,common_name\n13,Wall iris\n")
    options = {"directory": str(folder), "common_names": str(names)}
    spec = SourceSpec("inat", "inaturalist", {**options, "partitions": 3})
    build, record = crawl_in_parts(tmp_path, spec, parts=3, early=1)
    assert record["stats"]["rows"] == 61
    assert record["stats"]["status"] == {"pending": 39, "rejected": 22}  # 21 animals (taxon 14), 1 repeat

    whole = Recipe(name="t", output_dir=str(tmp_path / "whole"), sources=[SourceSpec("inat", "inaturalist", options)])
    run_unit(crawl.CrawlStage(), Build.of(whole), "inat")
    alone = pq.read_table(tmp_path / "whole" / "crawl" / "inat.parquet").to_pylist()
    joined = crawled(tmp_path, "inat")
    assert [r["input_row"] for r in joined] != [r["input_row"] for r in alone]  # by partition, then by row
    assert sorted(joined, key=lambda r: r["input_row"]) == alone
    assert "repeats row 6 of" in alone[-1]["error"]

    names.write_text("taxon_id,common_name\n13,Iris\n")
    with pytest.raises(StageMismatch):
        run_unit(crawl.CrawlPartsStage(), build, "inat.part-00000")
