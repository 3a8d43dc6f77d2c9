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


def metadata(row):
    return None if row["source_metadata"] is None else json.loads(row["source_metadata"])


def test_laion_parquet_metadata_keeps_values_and_types_in_configured_order(tmp_path, ctx):
    """LAION-400M / 5B parquet layout: SAMPLE_ID int64, URL, TEXT, similarity, NSFW, punsafe, LICENSE."""
    path = tmp_path / "laion.parquet"
    table = pa.table(
        {
            "SAMPLE_ID": pa.array([1001, 1002, 1003], pa.int64()),
            "URL": ["https://laion.example/1.jpg", "https://laion.example/2.jpg", "ftp://laion.example/3.jpg"],
            "TEXT": ["a red bicycle", "a teapot", "a kite"],
            "similarity": pa.array([0.3312, float("nan"), 0.29], pa.float64()),
            "NSFW": ["UNLIKELY", "UNSURE", None],
            "punsafe": pa.array([0.01, 0.5, float("inf")], pa.float32()),
            "LICENSE": ["?", "?", "?"],
            "WIDTH": pa.array([640, 500, 320], pa.int32()),
        }
    )
    pq.write_table(table, path)
    columns = ["similarity", "NSFW", "punsafe", "SAMPLE_ID", "WIDTH"]
    rows = crawl(path, ctx, name="laion", url_col="URL", caption_col="TEXT", id_col="SAMPLE_ID",
                 metadata_columns=columns)  # fmt: skip
    pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA)
    assert list(json.loads(rows[0]["source_metadata"])) == columns  # the configured order, not the file's
    first, second, third = (metadata(r) for r in rows)
    assert first == {"similarity": 0.3312, "NSFW": "UNLIKELY", "punsafe": pytest.approx(0.01), "SAMPLE_ID": 1001,
                     "WIDTH": 640}  # fmt: skip
    assert isinstance(first["SAMPLE_ID"], int) and isinstance(first["similarity"], float)
    assert second["similarity"] is None and second["NSFW"] == "UNSURE"  # NaN -> null
    assert third["punsafe"] is None and third["NSFW"] is None  # inf -> null, null stays null
    assert rows[2]["status"] == "rejected" and third["SAMPLE_ID"] == 1003  # a rejected row keeps its metadata
    assert "NaN" not in rows[1]["source_metadata"] and "Infinity" not in rows[2]["source_metadata"]


def test_datacomp_parquet_metadata_keeps_lists_of_lists(tmp_path, ctx):
    path = tmp_path / "datacomp.parquet"
    table = pa.table(
        {
            "uid": ["00a1", "00a2"],
            "url": ["https://dc.example/1.jpg", "https://dc.example/2.jpg"],
            "text": ["a dog on a beach", "a chart"],
            "clip_b32_similarity_score": pa.array([0.31, 0.22], pa.float32()),
            "face_bboxes": pa.array(
                [[[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.75, 0.875]], []], pa.list_(pa.list_(pa.float64()))
            ),
            "sha256": ["ab" * 32, "cd" * 32],
        }
    )
    pq.write_table(table, path)
    rows = crawl(path, ctx, name="datacomp", caption_col="text", id_col="uid",
                 metadata_columns=["uid", "clip_b32_similarity_score", "face_bboxes"])  # fmt: skip
    first, second = (metadata(r) for r in rows)
    assert first["face_bboxes"] == [[0.1, 0.2, 0.3, 0.4], [0.5, 0.5, 0.75, 0.875]] and second["face_bboxes"] == []
    assert first["uid"] == "00a1" and first["clip_b32_similarity_score"] == pytest.approx(0.31)
    assert "sha256" not in first  # only what the recipe asked for


def test_no_metadata_columns_means_null_source_metadata(tmp_path, ctx):
    path = tmp_path / "pool.parquet"
    pq.write_table(pa.Table.from_pylist(ROWS), path)
    assert [r["source_metadata"] for r in crawl(path, ctx)] == [None, None, None]


@pytest.mark.parametrize("kind", ["parquet", "csv", "jsonl"])
def test_a_missing_metadata_column_names_file_column_and_found(tmp_path, ctx, kind):
    path = tmp_path / f"pool.{kind}"
    if kind == "parquet":
        pq.write_table(pa.table({"url": ["https://x.org/1.jpg"], "caption": ["t"], "NSFW": ["UNLIKELY"]}), path)
    elif kind == "csv":
        path.write_text("url,caption,NSFW\nhttps://x.org/1.jpg,t,UNLIKELY\n")
    else:
        path.write_text('{"url": "https://x.org/1.jpg", "caption": "t", "NSFW": "UNLIKELY"}\n')
    with pytest.raises(SourceError, match=rf"pool.{kind}: missing \w+ column\(s\) \['similarity'\]; found .*'NSFW'"):
        crawl(path, ctx, metadata_columns=["NSFW", "similarity"])


def test_csv_metadata_are_the_strings_of_the_file(tmp_path, ctx):
    path = tmp_path / "pool.csv"
    path.write_text(
        "url,caption,similarity,NSFW,WIDTH\n"
        "https://x.org/1.jpg,a cat,0.33,UNLIKELY,640\n"
        "https://x.org/2.jpg,a dog,,NSFW,\n"
        "https://x.org/3.jpg,too,many,fields,here,!\n"
    )
    rows = crawl(path, ctx, metadata_columns=["similarity", "NSFW", "WIDTH"])
    assert metadata(rows[0]) == {"similarity": "0.33", "NSFW": "UNLIKELY", "WIDTH": "640"}
    assert metadata(rows[1]) == {"similarity": "", "NSFW": "NSFW", "WIDTH": ""}  # as published: empty, not null
    assert rows[2]["status"] == "rejected" and rows[2]["source_metadata"] is None  # an unparsed row: nothing kept


def test_jsonl_metadata_keep_json_values_and_a_later_missing_key_is_null(tmp_path, ctx):
    path = tmp_path / "pool.jsonl"
    objects = [
        {"url": "https://x.org/1.jpg", "caption": "a", "score": 0.5, "flags": {"nsfw": False}, "tags": ["x", 1]},
        {"url": "https://x.org/2.jpg", "caption": "b", "score": float("nan"), "flags": None, "tags": []},
        {"url": "https://x.org/3.jpg", "caption": "c", "tags": ["y"]},
    ]
    path.write_text("".join(json.dumps(o) + "\n" for o in objects))  # json.dumps writes NaN as NaN
    rows = crawl(path, ctx, metadata_columns=["score", "flags", "tags"])
    assert [metadata(r) for r in rows] == [
        {"score": 0.5, "flags": {"nsfw": False}, "tags": ["x", 1]},
        {"score": None, "flags": None, "tags": []},
        {"score": None, "flags": None, "tags": ["y"]},
    ]
    assert [r["status"] for r in rows] == ["pending"] * 3  # metadata never rejects a row


def test_a_parquet_bytes_metadata_column_is_refused_and_bad_config_named(tmp_path, ctx):
    path = tmp_path / "pool.parquet"
    table = pa.table({"url": ["https://x.org/1.jpg"], "caption": ["t"], "jpg": pa.array([b"\xff\xd8"], pa.binary()),
                      "nested": pa.array([[b"a"]], pa.list_(pa.binary()))})  # fmt: skip
    pq.write_table(table, path)
    with pytest.raises(SourceError, match=r"pool.parquet: metadata column 'jpg' holds bytes \(binary\)"):
        crawl(path, ctx, metadata_columns=["jpg"])
    with pytest.raises(SourceError, match=r"metadata column 'nested' holds bytes"):
        crawl(path, ctx, metadata_columns=["nested"])
    with pytest.raises(ConfigError, match="metadata_columns must be a list"):
        crawl(path, ctx, metadata_columns="similarity")
    with pytest.raises(ConfigError, match=r"metadata_columns names \['a'\] more than once"):
        crawl(path, ctx, metadata_columns=["a", "b", "a"])


def test_source_metadata_can_be_queried_with_duckdb_json_functions(tmp_path, ctx):
    import duckdb

    path = tmp_path / "laion.parquet"
    table = pa.table({"URL": ["https://l.example/1.jpg", "https://l.example/2.jpg"], "TEXT": ["a", "b"],
                      "similarity": [0.35, 0.25], "NSFW": ["UNLIKELY", "NSFW"]})  # fmt: skip
    pq.write_table(table, path)
    rows = crawl(path, ctx, url_col="URL", caption_col="TEXT", metadata_columns=["similarity", "NSFW"])
    candidates = pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA)  # noqa: F841  (read by DuckDB below)
    found = duckdb.sql(
        "SELECT url FROM candidates WHERE source_metadata->>'$.NSFW' = 'UNLIKELY' "
        "AND json_extract(source_metadata, '$.similarity')::DOUBLE > 0.3"
    ).fetchall()
    assert found == [("https://l.example/1.jpg",)]


@pytest.mark.parametrize("kind", ["tsv_headerless", "csv_gz", "jsonl", "parquet"])
def test_chunk_rows_cuts_one_file_into_parts_whose_rows_joined_are_the_whole_files(tmp_path, ctx, kind):
    """A single big file, cut into parts of 4 rows: each part reads only its rows (same input_row numbers, a bad
    row rejected in its own part), and the parts in order give exactly the rows of the file read whole."""
    from pipeline.sources import pool
    from pipeline.sources.chunks import split_part

    rows = [(f"http://h/{i}.jpg", f"caption {i}") for i in range(11)]
    options = {"name": "big", "chunk_rows": 4}
    if kind == "tsv_headerless":
        path = tmp_path / "cc12m.tsv"
        lines = [f"{u}\t{c}" for u, c in rows]
        lines[5] = "only-one-field"  # a malformed line: a rejected row in the second part
        path.write_text("\n".join(lines) + "\n")
        options["columns"] = ["url", "caption"]
    elif kind == "csv_gz":
        path = tmp_path / "pool.csv.gz"
        with gzip.open(path, "wt") as f:
            f.write("url,caption\n" + "".join(f"{u},{c}\n" for u, c in rows))
    elif kind == "jsonl":
        path = tmp_path / "pool.jsonl"
        path.write_text("".join(json.dumps({"url": u, "caption": c}) + "\n" for u, c in rows))
    else:
        path = tmp_path / "pool.parquet"
        pq.write_table(pa.table({"url": [u for u, _ in rows], "caption": [c for _, c in rows]}), path,
                       row_group_size=3)  # fmt: skip
    options["path"] = str(path)
    config = pool.Config.from_dict(options)
    parts = pool.parts(config)
    assert [split_part(p)[1:] for p in parts] == [(1, 4), (5, 8), (9, 11)]
    whole = list(pool.read(pool.Config.from_dict({**options, "chunk_rows": None}), ctx))
    chunked = [row for part in parts for row in pool.read_part(config, ctx, part)]
    assert chunked == whole and [r["input_row"] for r in chunked] == list(range(1, 12))
    assert all(r["input_file"] == str(path) for r in chunked)
    if kind == "tsv_headerless":
        second = list(pool.read_part(config, ctx, parts[1]))
        assert [r["status"] for r in second] == ["pending", "rejected", "pending", "pending"]
    assert pool.parts(pool.Config.from_dict({**options, "chunk_rows": 11})) == [str(path)]  # small enough: whole
    with pytest.raises(ConfigError, match="chunk_rows must be a positive number"):
        pool.Config.from_dict({**options, "chunk_rows": 0})
