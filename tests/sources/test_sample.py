"""The committed offline sample: real formats, and every adapter outcome matches sample/expected.csv."""

import csv
import hashlib
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from pipeline.core.schema import CANDIDATE_SCHEMA
from pipeline.sources.base import CrawlContext
from pipeline.sources.registry import read_source

SAMPLE = Path(__file__).resolve().parents[2] / "sample"
REWRITE = {"http://sample.plantmix.invalid/": "http://127.0.0.1:8/"}


def crawl_sample(style="dalip"):
    ctx = CrawlContext(caption_style=style)
    rows = list(
        read_source(
            "inaturalist",
            {
                "directory": str(SAMPLE / "inaturalist"),
                "common_names": "common_names.csv",
                "base_url": "http://sample.plantmix.invalid/inaturalist",
                "url_rewrite": REWRITE,
            },
            ctx,
        )
    )
    rows += read_source(
        "gbif_dwca",
        {"path": str(SAMPLE / "gbif/plantnet-sample-dwca.zip"), "name": "plantnet", "url_rewrite": REWRITE},
        ctx,
    )
    rows += read_source(
        "url_caption_pool",
        {"path": str(SAMPLE / "general/pool.parquet"), "name": "general_pool", "id_col": "uid", "url_rewrite": REWRITE},
        ctx,
    )
    return rows


def test_sample_rows_match_expected_outcomes():
    rows = crawl_sample()
    pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA)
    expected = {e["source_record_id"]: e for e in csv.DictReader(open(SAMPLE / "expected.csv", encoding="utf-8"))}
    assert len(rows) == len(expected) == 200
    assert len({r["sample_id"] for r in rows}) == 200
    for row in rows:
        exp = expected[row["source_record_id"]]
        assert row["url"].replace("http://127.0.0.1:8/", "http://sample.plantmix.invalid/") == exp["url"]
        if exp["expected_status"] == "rejected":
            assert row["status"] == "rejected" and exp["reason"] in row["error"], (row, exp)
        else:
            assert row["status"] == "pending", (row["error"], exp)


def test_sample_images_match_their_promised_defects():
    expected = list(csv.DictReader(open(SAMPLE / "expected.csv", encoding="utf-8")))
    files = {e["url"]: SAMPLE / "images" / e["url"].removeprefix("http://sample.plantmix.invalid/") for e in expected}
    digest = {u: hashlib.sha256(p.read_bytes()).hexdigest() for u, p in files.items() if p.is_file()}
    by_id = {e["source_record_id"]: e for e in expected}
    for e in expected:
        if e["expected_status"] == "failed_download":
            assert not files[e["url"]].exists()
        if e["expected_status"] == "opted_out":
            assert "/optout/" in e["url"]
        if e["duplicate_of"]:
            assert digest[e["url"]] == digest[by_id[e["duplicate_of"]]["url"]]
    assert sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file()) < 2_000_000


@pytest.mark.parametrize("style", ["bioclip_taxonomic_common", "original"])
def test_sample_caption_styles(style):
    rows = [r for r in crawl_sample(style) if r["status"] == "pending"]
    plant = next(r for r in rows if r["scientific_name"] == "Iris tectorum")
    general = next(r for r in rows if r["domain"] == "general")
    assert general["caption_kind"] == "original"
    if style == "bioclip_taxonomic_common":
        assert plant["caption"] == (
            "a photo of Plantae Tracheophyta Liliopsida Asparagales Iridaceae Iris tectorum with common name Wall iris."
        )
    else:
        assert plant["caption_kind"] in ("original", "dalip")


def test_make_sample_is_deterministic(tmp_path):
    script = SAMPLE.parent / "scripts" / "make_sample.py"
    subprocess.run([sys.executable, str(script), "--out", str(tmp_path)], check=True, capture_output=True)
    generated = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(generated) > 190
    for path in generated:
        assert path.read_bytes() == (SAMPLE / path.relative_to(tmp_path)).read_bytes(), path
