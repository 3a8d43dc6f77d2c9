"""Crawl stage: every input row becomes one candidate row, repeats are rejected with the row they repeat."""

from __future__ import annotations

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


def test_a_changed_caption_style_is_not_silently_reused(tmp_path):
    recipe = pool_recipe(tmp_path, [("a", "http://h/1.jpg", "one two")])
    crawl_source(recipe)
    crawl_source(recipe)  # same recipe: reused
    other = pool_recipe(tmp_path, [("a", "http://h/1.jpg", "one two")], caption_style="bioclip_scientific")
    with pytest.raises(StageMismatch):
        crawl_source(other)
