import gzip
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core.schema import CANDIDATE_SCHEMA, sample_id_for
from pipeline.sources.base import ConfigError, SourceError
from pipeline.sources.registry import read_source

ROWS = [
    {"uid": "a1", "url": "https://img.example.org/1.jpg", "caption": "a red bicycle", "license": "CC-BY-4.0"},
    {"uid": "a2", "url": "https://img.example.org/2.jpg", "caption": "a blue teapot", "license": None},
    {"uid": "a3", "url": "javascript:alert(1)", "caption": "a kite", "license": None},
]


def crawl(path, ctx, **options):
    return list(read_source("url_caption_pool", {"path": str(path), **options}, ctx))


def test_parquet_pool(tmp_path, ctx):
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    rows = crawl(path, ctx, id_col="uid", license_col="license", name="laion")
    pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA)
    assert [(r["caption"], r["caption_kind"], r["domain"]) for r in rows[:2]] == [
        ("a red bicycle", "original", "general"),
        ("a blue teapot", "original", "general"),
    ]
    assert [r["license"] for r in rows[:2]] == ["cc-by-4.0", "unspecified"]  # default_license for missing ones
    assert rows[0]["sample_id"] == sample_id_for("laion", "a1")
    assert (
        rows[2]["status"] == "rejected" and "row 3, field url: URL scheme 'javascript' not allowed" in rows[2]["error"]
    )


def test_csv_and_jsonl_gz_pools(tmp_path, ctx):
    csv_path = tmp_path / "pool.csv"
    csv_path.write_text('URL,TEXT\nhttps://x.org/1.jpg,"a cat, sleeping"\nhttps://x.org/2.jpg\n')
    rows = crawl(csv_path, ctx, url_col="URL", caption_col="TEXT")
    assert rows[0]["caption"] == "a cat, sleeping" and rows[0]["sample_id"] == sample_id_for(
        "pool", "https://x.org/1.jpg"
    )
    assert rows[1]["error"].endswith("row 2, field (row): line 3: expected 2 fields, found 1")
    jsonl = tmp_path / "pool.jsonl.gz"
    lines = [json.dumps({"url": "https://x.org/1.jpg", "caption": "a dog"}), "{not json", "[1, 2]", ""]
    jsonl.write_bytes(gzip.compress("\n".join(lines).encode()))
    rows = crawl(jsonl, ctx, default_license=None)
    assert [r["input_row"] for r in rows] == [1, 2, 3]
    assert rows[0]["error"].endswith("field license: no open license (empty)")  # default_license: null rejects
    assert "row 2, field (row): line 2: invalid JSON" in rows[1]["error"]
    assert "row 3, field (row): line 3: expected a JSON object, found list" in rows[2]["error"]


@pytest.mark.parametrize("kind", ["parquet", "csv", "jsonl"])
def test_missing_column_names_file_expected_and_found(tmp_path, ctx, kind):
    path = tmp_path / f"pool.{kind}"
    if kind == "parquet":
        pq.write_table(pa.table({"url": ["https://x.org/1.jpg"], "text": ["t"]}), path)
    elif kind == "csv":
        path.write_text("url,text\nhttps://x.org/1.jpg,t\n")
    else:
        path.write_text('{"url": "https://x.org/1.jpg", "text": "t"}\n')
    with pytest.raises(
        SourceError, match=rf"pool.{kind}: missing (configured|required) column\(s\) \['caption'\]; found .*'text'"
    ):
        crawl(path, ctx)


@pytest.mark.parametrize("kind", ["csv", "jsonl", "parquet"])
def test_empty_file(tmp_path, ctx, kind):
    path = tmp_path / f"pool.{kind}"
    if kind == "parquet":
        pq.write_table(pa.table({"url": pa.array([], pa.string()), "caption": pa.array([], pa.string())}), path)
    else:
        path.write_text("")
    with pytest.raises(SourceError, match=rf"pool.{kind}: empty file"):
        crawl(path, ctx)


def test_undecodable_bytes_name_file_and_line(tmp_path, ctx):
    path = tmp_path / "pool.jsonl"
    path.write_bytes(
        b'{"url": "https://x.org/1.jpg", "caption": "ok"}\n{"url": "https://x.org/2.jpg", "caption": "\xc3\x28"}\n'
    )
    with pytest.raises(SourceError, match=r"pool.jsonl line 2: bytes not valid utf-8"):
        crawl(path, ctx)
    path = tmp_path / "pool.csv"
    path.write_bytes(b"url,caption\nhttps://x.org/1.jpg,caf\xe9\n")
    with pytest.raises(SourceError, match=r"pool.csv line 2: bytes not valid utf-8"):
        crawl(path, ctx)


def test_broken_parquet_and_bad_config(tmp_path, ctx):
    path = tmp_path / "pool.parquet"
    path.write_bytes(b"not parquet at all")
    with pytest.raises(SourceError, match=r"pool.parquet: not a readable Parquet file"):
        crawl(path, ctx)
    with pytest.raises(ConfigError, match="cannot tell the format"):
        crawl(tmp_path / "pool.xlsx", ctx)


def test_a_folder_or_glob_of_part_files_is_read_in_name_order(tmp_path, ctx):
    parts = tmp_path / "pool"
    parts.mkdir()
    for i in (1, 0):
        pq.write_table(pa.table({"url": [f"https://h/{i}-{j}.jpg" for j in range(2)], "caption": ["a b", "c d"]}),
                       parts / f"part-{i:05d}.parquet")  # fmt: skip
    (parts / "README.txt").write_text("not a pool file")
    by_folder = list(read_source("url_caption_pool", {"path": str(parts), "format": "parquet"}, ctx))
    by_glob = list(read_source("url_caption_pool", {"path": str(parts / "part-*.parquet")}, ctx))
    assert [r["url"] for r in by_folder] == [r["url"] for r in by_glob] == [
        "https://h/0-0.jpg", "https://h/0-1.jpg", "https://h/1-0.jpg", "https://h/1-1.jpg"]  # fmt: skip
    assert by_folder[2]["input_file"].endswith("part-00001.parquet") and by_folder[2]["input_row"] == 1
    with pytest.raises(SourceError, match="no parquet pool files"):
        list(read_source("url_caption_pool", {"path": str(tmp_path / "none-*.parquet")}, ctx))


def test_one_unparseable_url_is_a_rejected_row_and_the_crawl_goes_on(tmp_path, ctx):
    path = tmp_path / "pool.csv"
    path.write_text("url,caption\nhttps://x.org/1.jpg,a\nhttp://[::1/a.jpg,b\n  https://x.org/3.jpg  ,c\n")
    rows = crawl(path, ctx)
    assert [r["status"] for r in rows] == ["pending", "rejected", "pending"]
    assert rows[1]["error"] == f"{path} row 2, field url: invalid URL (Invalid IPv6 URL): http://[::1/a.jpg"
    assert rows[2]["url"] == "https://x.org/3.jpg"


def test_wrong_typed_jsonl_values_are_rejected_rows_not_stringified(tmp_path, ctx):
    records = [
        {"uid": 7, "url": "https://x.org/1.jpg", "caption": [1, 2], "license": "CC0"},
        {"uid": 8, "url": "https://x.org/2.jpg", "caption": "fine", "license": "CC0"},
        {"uid": 9, "url": "https://x.org/3.jpg", "caption": "fine", "license": {"code": "CC0"}},
        {"uid": 10, "url": 42, "caption": "fine", "license": "CC0"},
    ]
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    rows = crawl(path, ctx, id_col="uid", license_col="license")
    assert [r["status"] for r in rows] == ["rejected", "pending", "rejected", "rejected"]
    assert rows[0]["error"] == f"{path} row 1, field caption: expected str, found list [1, 2]"
    assert rows[0]["original_text"] is None and rows[0]["caption"] is None  # never "[1, 2]"
    assert [r["source_record_id"] for r in rows[:2]] == ["7", "8"]  # integer ids are fine
    assert rows[2]["error"] == f"{path} row 3, field license: expected str, found dict {{'code': 'CC0'}}"
    assert rows[3]["error"] == f"{path} row 4, field url: expected str, found int 42"


def test_wrong_typed_parquet_column_is_a_rejected_row_per_row(tmp_path, ctx):
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.table({"url": ["https://x.org/1.jpg"], "caption": [["a", "b"]]}), path)
    (row,) = crawl(path, ctx)
    assert row["error"] == f"{path} row 1, field caption: expected str, found list ['a', 'b']"


def test_every_jsonl_object_is_checked_for_the_configured_columns(tmp_path, ctx):
    path = tmp_path / "pool.jsonl"
    objects = [
        {"url": "https://x.org/1.jpg", "caption": "a", "license": "CC0"},
        {"url": "https://x.org/2.jpg", "license": "CC0"},
        {"url": "https://x.org/3.jpg", "caption": "c"},
    ]
    path.write_text("".join(json.dumps(o) + "\n" for o in objects))
    rows = crawl(path, ctx, license_col="license")
    assert rows[0]["status"] == "pending"
    assert rows[1]["error"] == f"{path} row 2, field caption: missing from this row (a configured column)"
    assert rows[2]["error"] == f"{path} row 3, field license: missing from this row (a configured column)"


def test_pretty_printed_json_array_is_refused_with_a_clear_error(tmp_path, ctx):
    path = tmp_path / "pool.json"
    path.write_text(json.dumps([{"url": "https://x.org/1.jpg", "caption": "a"}], indent=2))
    with pytest.raises(SourceError, match=r"pool.json line 1: the file is a JSON array .*not JSON Lines"):
        crawl(path, ctx)


def test_a_headerless_tsv_is_read_with_the_columns_option(tmp_path, ctx):
    """CC12M's layout: ``url<TAB>caption``, no header line (its first line is a row)."""
    path = tmp_path / "cc12m.tsv.gz"
    lines = ["https://img.example.org/1.jpg\tA <PERSON> on a red bike", "https://img.example.org/2.jpg\tthree\tfields"]
    path.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    first, second = crawl(path, ctx, columns=["url", "caption"])
    assert (first["url"], first["original_text"], first["status"]) == (
        lines[0].split("\t")[0],
        "A <PERSON> on a red bike",
        "pending",
    )
    assert first["input_row"] == 1 and first["sample_id"] == sample_id_for("pool", first["url"])
    assert (
        second["status"] == "rejected" and "row 2, field (row): line 2: expected 2 fields, found 3" in second["error"]
    )
    with pytest.raises(ConfigError, match="columns names a headerless csv/tsv"):
        crawl(tmp_path / "x.parquet", ctx, columns=["url", "caption"])
    with pytest.raises(ConfigError, match="columns must be a list"):
        crawl(path, ctx, columns="url,caption")
