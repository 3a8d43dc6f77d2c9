"""`plantmix sql` and `plantmix summary` given hostile input: quotes in paths, awkward captions, SQL that reaches out.

A tiny manifest is written by hand (every manifest column, three rows), so these tests need no build.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.core import duck, schema
from pipeline.query import cli, sql
from pipeline.query.summary import summarize
from tests.pipeline.test_object_store import s3  # noqa: F401  (the S3 server fixture, with its loopback guard)

HOSTILE_CAPTION = 'Iris "wall iris", tectorum\nsecond line, with ""doubled"" quotes'
PLANT = {"kingdom": "Plantae", "phylum": None, "class": None, "order": None, "family": "Iridaceae",
         "genus": "Iris", "species": "Iris tectorum"}  # fmt: skip


def manifest_rows() -> list[dict]:
    """One kept plant row with a hostile caption, one failed download, one exact duplicate of the first."""
    base = dict(source="inat", domain="plant", license="cc0-1.0", status="ok", keep=True)
    return [
        dict(base, sample_id="a", caption=HOSTILE_CAPTION, scientific_name="Iris tectorum", taxonomy=PLANT,
             clip_score=0.3, selected=True, sample_repeat=1),
        dict(base, sample_id="b", caption=None, status="failed_download", error="HTTP 404", keep=False,
             drop_reason="failed_download"),
        dict(base, sample_id="c", caption="a copy", exact_dup_of="a", keep=False, drop_reason="exact_duplicate"),
    ]  # fmt: skip


def write_manifest(path: Path, rows: list[dict] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows or manifest_rows(), schema=schema.MANIFEST_SCHEMA), path)
    return path


@pytest.fixture
def build(tmp_path) -> Path:
    """A build folder whose name has a single quote and a space in it."""
    folder = tmp_path / "it's a build"
    write_manifest(folder / "manifest.parquet")
    return folder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


# --- output and paths --------------------------------------------------------------------------------------------


def test_csv_output_round_trips_commas_quotes_and_newlines(build, capsys):
    code, out, _ = run_cli(capsys, "sql", "SELECT sample_id, caption FROM samples ORDER BY sample_id",
                           "--build", str(build), "--format", "csv")  # fmt: skip
    assert code == 0
    assert list(csv.reader(io.StringIO(out))) == [
        ["sample_id", "caption"],
        ["a", HOSTILE_CAPTION],
        ["b", ""],  # NULL is an empty field
        ["c", "a copy"],
    ]


def test_a_build_path_with_a_quote_works_for_sql_and_summary(build, capsys):
    assert sql.connect(build).sql("SELECT count(*) FROM kept").fetchall()[0][0] == 1
    code, out, _ = run_cli(capsys, "sql", "SELECT count(*) AS n FROM samples", "--build", str(build), "--format", "csv")
    assert (code, out.split()) == (0, ["n", "3"])
    code, out, _ = run_cli(capsys, "summary", "--build", str(build))
    assert code == 0 and "3 candidates = 2 ok + 1 failed_download" in out
    assert summarize(build / "manifest.parquet")["by_rule"] == {
        "plant": {"(kept)": 1, "exact_duplicate": 1, "failed_download": 1}
    }


# --- read-only by default ----------------------------------------------------------------------------------------


def test_every_predefined_view_answers_on_a_read_only_connection(build):
    con = sql.connect(build, read_only=True)
    views = [name for (name,) in con.sql("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()]
    assert sorted(views) == sorted(sql.VIEW_NAMES)
    for view in views:
        con.sql(f"SELECT * FROM {view}").fetchall()  # raises if the view cannot read the manifest
    assert con.sql("SELECT members FROM duplicates").fetchall() == [(["c"],)]
    assert con.sql("SELECT family, images FROM taxa").fetchall() == [("Iridaceae", 1)]
    assert con.sql("SELECT count(*) FROM released").fetchall()[0][0] == 1


def test_read_only_connection_opens_no_other_file_and_cannot_be_unlocked(build, tmp_path):
    """The DuckDB settings alone, without the statement check the CLI adds."""
    con = sql.connect(build, read_only=True)
    target = tmp_path / "x.csv"
    with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
        con.sql(f"COPY (SELECT 1) TO '{target}'")
    assert not target.exists()
    with pytest.raises(duckdb.PermissionException):
        con.sql("SELECT * FROM read_text('/etc/passwd')").fetchall()
    with pytest.raises(duckdb.Error, match="locked"):
        con.sql("SET enable_external_access = true")
    with pytest.raises(duckdb.Error, match="locked"):
        con.sql("RESET allowed_directories")
    assert con.sql("SELECT count(*) FROM samples").fetchall()[0][0] == 3  # still answers


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("COPY (SELECT 1) TO '{tmp}/x.csv'", "COPY statements are refused"),
        ("SELECT * FROM read_text('/etc/passwd')", "/etc/passwd"),
        ("SET enable_external_access = true", "locked"),
        ("EXPORT DATABASE '{tmp}/x'", "EXPORT statements are refused"),
        ("SELECT 1; COPY samples TO '{tmp}/x.csv'", "COPY statements are refused"),
        ("EXPLAIN ANALYZE COPY samples TO '{tmp}/x.csv'", "EXPLAIN statements are refused"),
        ("PREPARE w AS COPY samples TO '{tmp}/x.csv'", "PREPARE statements are refused"),
    ],
)
def test_sql_cli_is_read_only_by_default(build, tmp_path, capsys, query, message):
    code, out, err = run_cli(capsys, "sql", query.format(tmp=tmp_path), "--build", str(build))
    assert code == 1 and out == ""
    assert message in err
    assert not (tmp_path / "x.csv").exists() and not (tmp_path / "x").exists()


def test_the_manifest_itself_cannot_be_overwritten(build, capsys):
    """The one file a read-only session may open: DuckDB would let COPY write it, the CLI refuses."""
    manifest = build / "manifest.parquet"
    before = manifest.read_bytes()
    query = f"COPY (SELECT 1 AS x) TO {duck.literal(manifest)} (FORMAT parquet, USE_TMP_FILE false)"
    code, _, err = run_cli(capsys, "sql", query, "--build", str(build))
    assert code == 1 and "--allow-writes" in err
    assert manifest.read_bytes() == before


def test_allow_writes_opts_out(build, tmp_path, capsys):
    target = tmp_path / "kept.csv"
    code, _, err = run_cli(capsys, "sql", f"COPY (SELECT sample_id FROM kept) TO '{target}'", "--build", str(build),
                           "--allow-writes")  # fmt: skip
    assert code == 0, err
    assert target.read_text().split() == ["sample_id", "a"]
    with pytest.raises(SystemExit):  # one or the other
        cli.main(["sql", "SELECT 1", "--build", str(build), "--read-only", "--allow-writes"])


def test_interactive_mode_reports_a_refused_line_and_goes_on(build, tmp_path, capsys, monkeypatch):
    lines = f"SELECT count(*) AS n FROM kept\n\nCOPY samples TO '{tmp_path}/x.csv'\nSELECT 'after' AS s\n"
    monkeypatch.setattr("sys.stdin", io.StringIO(lines))
    code, out, err = run_cli(capsys, "sql", "--build", str(build), "--format", "csv")
    assert code == 0
    assert out.split() == ["n", "1", "s", "after"]
    assert "COPY statements are refused" in err and not (tmp_path / "x.csv").exists()


def test_a_glob_allows_exactly_the_files_it_matches(tmp_path, capsys):
    rows = manifest_rows()
    write_manifest(tmp_path / "parts" / "part-0.parquet", rows[:2])
    write_manifest(tmp_path / "parts" / "part-1.parquet", rows[2:])
    write_manifest(tmp_path / "parts" / "other.parquet")
    pattern = str(tmp_path / "parts" / "part-*.parquet")
    code, out, _ = run_cli(capsys, "sql", "SELECT count(*) AS n FROM samples", "--build", pattern, "--format", "csv")
    assert (code, out.split()) == (0, ["n", "3"])
    other = tmp_path / "parts" / "other.parquet"
    code, _, err = run_cli(capsys, "sql", f"SELECT count(*) FROM '{other}'", "--build", pattern)
    assert code == 1 and "disabled by configuration" in err
    assert run_cli(capsys, "sql", "SELECT 1", "--build", str(tmp_path / "parts" / "none-*.parquet"))[0] == 2


# --- a manifest on an object store -------------------------------------------------------------------------------


@pytest.mark.server
def test_read_only_session_on_s3_reads_the_manifest_and_nothing_else(s3, tmp_path, capsys):  # noqa: F811
    bucket = s3.bucket()
    root = s3.upload(write_manifest(tmp_path / "b" / "manifest.parquet").parent, f"{bucket}/builds/b")
    s3.fs.pipe(f"{bucket}/secret.txt", b"not for sql")
    code, out, _ = run_cli(capsys, "sql", "SELECT count(*) AS n FROM kept", "--build", root, "--format", "csv")
    assert (code, out.split()) == (0, ["n", "1"])
    code, _, err = run_cli(capsys, "sql", f"SELECT * FROM read_text('{bucket}/secret.txt')", "--build", root)
    assert code == 1 and "disabled by configuration" in err
    con = sql.connect(root, read_only=True)
    with pytest.raises(duckdb.PermissionException, match="disabled by configuration"):
        con.sql(f"COPY (SELECT 1) TO '{bucket}/x.csv'")
    assert not s3.fs.exists(f"{bucket}/x.csv")
    assert con.sql("SELECT count(*) FROM duplicates").fetchall()[0][0] == 1
