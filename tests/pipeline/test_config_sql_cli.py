"""Recipes fail loudly; the SQL views and the `plantmix` CLI answer over a real manifest."""

from __future__ import annotations

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.core.config import RecipeError, load_recipe
from pipeline.core.harness import StageMismatch, read_marker, run_step
from pipeline.query import cli, sql
from pipeline.stages.judge.merge import ManifestError, check_manifest
from tests.http_host import ImageHost
from tests.pipeline.helpers import candidates, recipe_with
from tests.pipeline.test_download import run_all

GOOD = {"name": "x", "output_dir": "out", "sources": [{"name": "a", "adapter": "url_caption_pool"}]}


def write(tmp_path, data) -> str:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"sources": [{"name": "a", "adapter": "p", "option": {}}]},
            r"recipe\.sources\[0\]: unknown key\(s\) \['option'\]",
        ),
        ({"download": {"shard_size": "big"}}, r"recipe\.download\.shard_size: expected int, got 'big'"),
        ({"caption_style": "fancy"}, r"caption_style: expected one of"),
        ({"sources": []}, r"sources: expected at least one source"),
    ],
)
def test_bad_recipes_name_the_file_and_key(tmp_path, change, message):
    path = write(tmp_path, {**GOOD, **change})
    with pytest.raises(RecipeError, match=message) as info:
        load_recipe(path)
    assert path in str(info.value)


def test_missing_required_key_and_missing_file(tmp_path):
    with pytest.raises(RecipeError, match=r"missing required key\(s\) \['output_dir'\]"):
        load_recipe(write(tmp_path, {"name": "x", "sources": GOOD["sources"]}))
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")


@pytest.fixture(scope="module")
def small_build(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sqlbuild")
    with ImageHost() as host:
        urls = [f"{host.url}/img/{i}.jpg" for i in range(6)] + [f"{host.url}/missing.jpg"]
        rows = candidates(urls) + [dict(candidates(["ftp://example.org/a.jpg"])[0], status="rejected", error="scheme")]
        run_all(recipe_with(tmp, rows))
    return tmp / "build"


def test_views_add_up(small_build):
    con = sql.connect(small_build)
    assert con.sql("SELECT count(*) FROM samples").fetchall() == [(8,)]
    assert con.sql("SELECT sum(n) FROM by_status").fetchall() == [(8,)]
    assert dict(con.sql("SELECT status, n FROM by_status").fetchall()) == {"ok": 6, "failed_download": 1, "rejected": 1}
    assert con.sql("SELECT candidates, kept, dropped FROM by_source").fetchall() == [(8, 6, 2)]
    assert con.sql("SELECT license, candidates, kept FROM licenses").fetchall() == [("cc0-1.0", 8, 6)]
    assert con.sql("SELECT count(*) FROM kept").fetchall() == [(6,)]


def test_plain_duckdb_reads_the_manifest(small_build):
    rows = duckdb.sql(f"SELECT count(*) FILTER (WHERE keep) FROM '{small_build}/manifest.parquet'").fetchall()
    assert rows == [(6,)]


def test_cli_sql_and_summary(small_build, capsys):
    assert cli.main(["sql", "SELECT status, n FROM by_status ORDER BY status", "--build", str(small_build),
                     "--format", "csv"]) == 0  # fmt: skip
    assert capsys.readouterr().out.splitlines() == ["status,n", "failed_download,1", "ok,6", "rejected,1"]
    assert cli.main(["sql", "SELECT nope FROM samples", "--build", str(small_build)]) == 1
    assert "nope" in capsys.readouterr().err
    assert cli.main(["summary", "--build", str(small_build)]) == 0
    assert "8 candidates = 6 ok + 1 failed_download + 1 rejected" in capsys.readouterr().out
    assert cli.main(["summary", "--build", str(small_build / "nowhere")]) == 2


def test_cli_sources_lists_and_documents_the_adapters(capsys):
    assert cli.main(["sources"]) == 0
    out = capsys.readouterr().out
    starts = {line.split()[0] for line in out.splitlines() if line and not line[0].isspace()}
    assert starts >= {"inaturalist", "gbif_dwca", "url_caption_pool", "local_folder", "eol", "commons"}
    assert "iNaturalist open data export" in out and "Wikimedia Commons" in out
    assert cli.main(["sources", "inaturalist"]) == 0
    out = capsys.readouterr().out
    for text in ("format    https://github.com/inaturalist/inaturalist-open-data", "get       https://",
                 "module    pipeline.sources.inaturalist", "all rights reserved -> rejected"):  # fmt: skip
        assert text in out
    rows = [line.split(None, 1) for line in out.splitlines() if line.startswith("  ") and line[2] != " "]
    table = dict(rows)  # the fields and options tables: first column -> the rest
    assert table["license"] == "photos.license" and table["rights_holder"].startswith("observers.name")
    assert table["source_record_id"] == "{photos.photo_id}:{photos.observation_uuid}"
    # Config options with their defaults, as a recipe writes them
    assert table["directory"].split() == ["str", "(required)"]
    assert table["quality_grades"].split() == ["tuple[str,", "...]", '["research"]']
    assert table["common_names"].split() == ["str", "|", "None", "null"]


def test_cli_sources_unknown_adapter_names_the_known_ones(capsys):
    assert cli.main(["sources", "wikimedia"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "unknown source adapter 'wikimedia'; known adapters: commons, eol, gbif_dwca, inaturalist" in captured.err


def test_stage_harness_keeps_nothing_from_a_failed_shard(tmp_path):
    stage = str(tmp_path / "stage")

    def broken(tmp):
        (tmp / "part.txt").write_text("half")
        raise OSError("disk full")

    with pytest.raises(OSError):
        run_step(stage, "00000", broken, provenance={})
    assert read_marker(stage, "00000") is None and not (tmp_path / "stage" / "part.txt").exists()
    assert not (tmp_path / "stage" / "_tmp").exists()  # the attempt's scratch folder is gone too
    record = run_step(stage, "00000", lambda tmp: (tmp / "part.txt").write_text("whole") and {"rows": 1},
                      decides={"v": 1}, provenance={"v": 1})  # fmt: skip
    assert read_marker(stage, "00000") == record and (tmp_path / "stage" / "part.txt").read_text() == "whole"
    assert record["provenance"] == {"v": 1} and record["stats"] == {"rows": 1}
    assert record["code_version"].startswith(("git:", "plantmix=="))
    # done: the work function is not called again
    assert run_step(stage, "00000", broken, decides={"v": 1})["stats"] == {"rows": 1}
    with pytest.raises(StageMismatch, match="other inputs or settings"):
        run_step(stage, "00000", broken, decides={"v": 2})
    redone = run_step(stage, "00000", lambda tmp: {"rows": 2}, decides={"v": 2}, on_change="redo")
    assert redone["stats"] == {"rows": 2} and read_marker(stage, "00000")["stats"] == {"rows": 2}


def test_manifest_check_refuses_lost_or_repeated_rows(small_build, tmp_path):
    """Checked against the crawl (the candidates), not against the manifest itself."""
    table = pq.read_table(small_build / "manifest.parquet")
    con = duckdb.connect()
    con.register("candidates", pq.read_table(small_build / "crawl" / "test.parquet", columns=["sample_id"]))

    def check(t):
        path = tmp_path / "m.parquet"
        pq.write_table(t, path)
        check_manifest(con, path)

    check(table)
    with pytest.raises(ManifestError, match="7 rows for 8 candidates"):
        check(table.slice(1))
    with pytest.raises(ManifestError, match="not unique"):
        check(pa.concat_tables([table.slice(0, 7), table.slice(0, 1)]))
    pending = table.set_column(table.schema.get_field_index("status"), "status", pa.array(["pending"] * 8))
    with pytest.raises(ManifestError, match="without a final status"):
        check(pending)
    ids = table["sample_id"].to_pylist()
    stranger = table.set_column(0, "sample_id", pa.array(["f" * 32, *ids[1:]]))  # one lost, one invented
    with pytest.raises(ManifestError, match=f"candidates missing from the manifest: \\['{ids[0]}'\\]"):
        check(stranger)
