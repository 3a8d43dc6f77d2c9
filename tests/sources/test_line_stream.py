"""A streamed (or fetched) text file gives the rows a loaded table gives, and its file errors still name the line."""

import gzip
import random

import duckdb
import pyarrow as pa
import pytest

from pipeline.sources import duck_rules, duck_text, line_stream
from pipeline.sources.base import SourceError

PIECES = [b"a", b"b", b"\t", b" ", b"x\xc3\xa9", b"\xef\xbb\xbf", b"\x00", b"'", b'"', b"\x1c", b"\\"]
PARTITION = "md5_number_lower(coalesce(b, '')) % 2 = 0"


def loaded(path, where=None):
    con = duckdb.connect()
    duck_text.load_table(con, "t", str(path), required=("a",), columns=("a", "b", "zz"), where=where)
    return con.sql("SELECT data_row, line, problem, a, b, zz FROM t ORDER BY data_row").fetchall()


def streamed(path, where=None, block_bytes=4 << 20, batch_rows=16_384):
    con = duckdb.connect()
    stream = duck_text.stream_table(con, "t", str(path), required=("a",), columns=("a", "b", "zz"), where=where)
    stream.block_bytes, stream.batch_rows = block_bytes, batch_rows
    with stream.errors_raised():
        rows = sorted(con.sql("SELECT seq, data_row, line, problem, a, b, zz FROM t").fetchall())
    assert [row[0] for row in rows] == list(range(len(rows)))  # seq: 0, 1, 2, ... over the rows kept
    return [row[1:] for row in rows]


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
@pytest.mark.parametrize("seed", range(2))
def test_streamed_rows_equal_the_loaded_tables_whatever_the_blocks(tmp_path, ending, seed):
    # Blank lines, short and long rows, a BOM or NUL inside a line, no line end at the end; blocks of a few bytes
    # cut lines (and \r\n pairs) anywhere.
    rng = random.Random(seed)
    path = tmp_path / "t.tsv"
    for _ in range(15):
        body = b"".join(rng.choice(PIECES + [ending] * 4) for _ in range(rng.randrange(0, 80)))
        path.write_bytes(b"a\tb\tc" + ending + body)
        for where in (None, PARTITION):
            blocks = rng.choice([1, 2, 3, 7, 64, 4096])
            assert outcome(streamed, path, where, block_bytes=blocks) == outcome(loaded, path, where)


def outcome(read, *args, **kwargs):
    """The rows, or the error (a file of lone-\r line ends is one line to the header check, and may hold NUL)."""
    try:
        return read(*args, **kwargs)
    except SourceError as exc:
        return str(exc)


def fetched(path, where=None):
    """The records :func:`duck_text.fetch_records` gives (not numbered, in no order), sorted."""
    con = duckdb.connect()
    table = duck_text.fetch_records(
        con, str(path), "problem, a, b, zz", required=("a",), columns=("a", "b", "zz"), where=where
    )
    return sorted((tuple(row.values()) for row in table.to_pylist()), key=repr)


def loaded_records(path, where=None):
    return sorted((row[2:] for row in loaded(path, where)), key=repr)


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_fetched_records_are_the_loaded_tables_rows_and_errors(tmp_path, ending):
    # Some files hold a record whose text is the header's (read numbered then, to leave out the header only).
    rng = random.Random(7)
    path = tmp_path / "t.tsv"
    for _ in range(30):
        pieces = PIECES + [ending] * 4 + [b"a\tb\tc" + ending]
        body = b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 80)))
        path.write_bytes(rng.choice([b"", ending]) + b"a\tb\tc" + ending + body)
        for where in (None, "a <> 'b'", "a = 'a'"):
            assert outcome(fetched, path, where) == outcome(loaded_records, path, where)


def streamed_records(path, skip_lines, where=None, block_bytes=4 << 20):
    con = duckdb.connect()
    stream = duck_text.stream_records(con, "t", str(path), delimiter="\t", skip_lines=skip_lines, where=where)
    stream.block_bytes = block_bytes
    with stream.errors_raised():
        rows = sorted(con.sql("SELECT seq, data_row, line, f FROM t").fetchall())
    assert [row[0] for row in rows] == list(range(len(rows)))
    return [row[1:] for row in rows]


def loaded_dwca_records(path, skip_lines, where=None):
    con = duckdb.connect()
    complaint = duck_text.load_records(con, "t", str(path), delimiter="\t", skip_lines=skip_lines, where=where)
    return complaint or con.sql("SELECT data_row, line, f FROM t ORDER BY data_row").fetchall()


@pytest.mark.parametrize("ending", [b"\n", b"\r\n", b"\r"], ids=["lf", "crlf", "cr"])
def test_streamed_archive_records_equal_the_loaded_ones(tmp_path, ending):
    # A Darwin Core Archive's file: ignoreHeaderLines physical lines skipped (0, 1 or 2, blank ones too), then
    # every non-blank line a record; a byte order mark first is no part of the first field.
    rng = random.Random(3)
    path = tmp_path / "t.txt"
    for _ in range(30):
        body = b"".join(rng.choice(PIECES + [ending] * 4) for _ in range(rng.randrange(0, 80)))
        path.write_bytes(rng.choice([b"", b"\xef\xbb\xbf"]) + body)
        skip = rng.choice([0, 1, 2])
        for where in (None, "md5_number_lower(coalesce(f[1], '')) % 2 = 0"):
            expected = loaded_dwca_records(path, skip, where)
            assert not isinstance(expected, str)  # (else DuckDB cannot read it cleanly: the Python reader's turn)
            blocks = rng.choice([1, 2, 5, 64, 4096])
            assert streamed_records(path, skip, where, block_bytes=blocks) == expected


def test_many_rows_stream_in_small_batches_numbered_as_the_loaded_table(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("a\tb\n" + "".join(f"{i}\tv{i}\n" + ("\n" if i % 7 == 0 else "") for i in range(5000)))
    assert streamed(path, block_bytes=1000, batch_rows=64) == loaded(path)
    assert streamed(path, PARTITION, block_bytes=1000, batch_rows=64) == loaded(path, PARTITION)


def test_a_gzipped_file_streams(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_text("a\tb\n1\t2\n\n3\t4\n")
    (tmp_path / "t.tsv.gz").write_bytes(gzip.compress(path.read_bytes()))
    assert (
        streamed(tmp_path / "t.tsv.gz") == loaded(path) == [(1, 2, None, "1", "2", None), (2, 4, None, "3", "4", None)]
    )


def test_bytes_that_are_not_utf8_name_the_line_even_late_in_the_file(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_bytes(b"a\tb\n" + b"1\t2\n" * 3000 + b"3\t\xff\n")
    with pytest.raises(SourceError, match=r"t.tsv line 3002: bytes not valid utf-8"):
        streamed(path, block_bytes=512)
    with pytest.raises(SourceError, match=r"t.tsv line 3002: bytes not valid utf-8"):
        fetched(path)


def test_a_line_over_the_limit_names_its_line(tmp_path, monkeypatch):
    monkeypatch.setattr(line_stream, "MAX_LINE_BYTES", 100)
    path = tmp_path / "t.tsv"
    path.write_text("a\tb\n1\t2\n" + "x" * 150 + "\t3\n")
    with pytest.raises(SourceError, match=r"t.tsv line 3: a line of 152 bytes; at most 100"):
        streamed(path)
    path.write_text("a\tb\n1\t2\n" + "x" * 5000)  # no line end at all after the last one
    with pytest.raises(SourceError, match=r"t.tsv: no line end in [0-9,]+ bytes"):
        streamed(path, block_bytes=64)


def test_the_license_function_gives_the_license_tables_values():
    raws = ["CC-BY", "cc-by-nc", "", "WTFPL", " CC0 ", "http://creativecommons.org/licenses/by/4.0/", "PD"]
    con = duckdb.connect()
    con.execute("CREATE TABLE raw AS SELECT unnest(?::VARCHAR[]) AS v", [[*raws, None] * 700])
    duck_rules.create_license_table(con, "licenses", "SELECT v FROM raw")
    duck_rules.register_license_function(con)
    by_function = con.sql("SELECT coalesce(v, ''), py_license(v) FROM raw").fetchall()
    table = {row[0]: row[1:] for row in con.sql("SELECT * FROM licenses").fetchall()}
    assert len(by_function) == 8 * 700
    assert all(tuple(got.values()) == table[raw] for raw, got in by_function)
    assert table["WTFPL"][4] and table["CC-BY"][0] == "cc-by"


def test_batches_are_whole_vectors_so_no_rows_are_held_back(tmp_path):
    # DuckDB's operators hold a short vector back until more rows come (or the query ends); blocks end anywhere,
    # so the stream hands on batches of exactly batch_rows (a multiple of 2,048) and only the last is shorter. With
    # one thread a join's output is then in file order; before, each block's short tail came out late (at 3M
    # photos, 27 rows at the very end, and every row after them waited in in_row_order).
    path = tmp_path / "t.tsv"
    path.write_text("a\tb\n" + "".join(f"{i:06d}\t{i % 7}\n" for i in range(200_000)))
    con = duckdb.connect()
    con.execute("SET threads = 1")
    con.execute("CREATE TABLE small AS SELECT range::VARCHAR AS b, range AS x FROM range(7)")
    stream = duck_text.stream_table(con, "t", str(path), required=("a",), columns=("a", "b"))
    stream.block_bytes = 2_075 * 9  # blocks of 2,075 nine-byte lines: a vector and a 27-row tail each
    sizes = []
    lines = stream.reader()
    con.register(
        "t_lines", pa.RecordBatchReader.from_batches(lines.schema, (sizes.append(b.num_rows) or b for b in lines))
    )
    con.execute("SET disabled_optimizers = 'join_order,build_side_probe_side'")
    seq = [row[0] for row in con.sql("SELECT t.seq FROM t LEFT JOIN small USING (b)").fetchall()]
    assert seq == list(range(200_000))
    assert set(sizes[:-1]) == {16_384} and sizes[-1] == 200_000 % 16_384
