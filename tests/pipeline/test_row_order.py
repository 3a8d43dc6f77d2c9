"""Rows in their file's order without a sort of the whole result, and Parquet written beside the work."""

import random

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.core.background_writer import BackgroundWriter
from pipeline.core.config import DuckDBConfig
from pipeline.core.duck import in_row_order
from pipeline.sources.base import CrawlContext
from pipeline.sources.registry import read_source_batches


def interleaved(rows: int, seed: int) -> list[pa.RecordBatch]:
    """Batches of rowids 0..rows-1 as two threads hand them back: runs of each, shuffled between them."""
    rng = random.Random(seed)
    runs, start = [], 0
    while start < rows:
        length = rng.randint(1, 40)
        runs.append(list(range(start, min(rows, start + length))))
        start += length
    rng.shuffle(runs)  # a run may come long before the ones ahead of it
    ids = [i for run in runs for i in run]
    return [
        pa.record_batch({"seq": ids[i : i + 50], "value": [f"v{x}" for x in ids[i : i + 50]]})
        for i in range(0, len(ids), 50)
    ]


@pytest.mark.parametrize("seed", range(5))
def test_interleaved_batches_come_back_in_table_order(seed):
    out = list(in_row_order(interleaved(1000, seed), "seq", batch_rows=64))
    assert [v for b in out for v in b.column("seq").to_pylist()] == list(range(1000))
    assert [v for b in out for v in b.column("value").to_pylist()] == [f"v{i}" for i in range(1000)]
    assert all(b.num_rows >= 64 for b in out[:-1])


def test_a_missing_or_repeated_row_is_an_error_not_a_silent_gap():
    batches = interleaved(300, 1)
    table = pa.Table.from_batches(batches)
    missing = table.filter(pc.not_equal(table["seq"], 137)).to_batches()
    with pytest.raises(RuntimeError, match="rows 137.. of the query never came back"):
        list(in_row_order(missing, "seq", 64))
    with pytest.raises(RuntimeError, match="came back twice"):
        list(in_row_order([*batches, batches[0]], "seq", 64))


def test_background_writer_writes_every_batch_in_order(tmp_path):
    schema = pa.schema([("n", pa.int64())])
    with BackgroundWriter(pq.ParquetWriter(tmp_path / "n.parquet", schema), depth=2) as writer:
        for start in range(0, 10_050, 150):
            writer.write(pa.record_batch({"n": list(range(start, start + 150))}, schema=schema))
    assert pq.read_table(tmp_path / "n.parquet")["n"].to_pylist() == list(range(10_050))


def test_background_writer_raises_the_writing_threads_error(tmp_path):
    schema = pa.schema([("n", pa.int64())])
    wrong = pa.record_batch({"s": ["not the file's schema"]})
    with pytest.raises(ValueError, match="schema"):
        with BackgroundWriter(pq.ParquetWriter(tmp_path / "n.parquet", schema), depth=1) as writer:
            writer.write(wrong)
            for _ in range(5):  # later writes neither block nor hide the first error
                writer.write(pa.record_batch({"n": [1]}, schema=schema))


def test_a_large_inaturalist_export_crawls_in_file_order_on_several_threads(tmp_path):
    # 300,000 photos: DuckDB's threads each join a stretch of the photos and hand their rows back interleaved;
    # the crawl still gives them in photos.csv order (and a sort of the whole result is not what does it).
    folder = tmp_path / "inat"
    folder.mkdir()
    con = duckdb.connect()

    def copy(sql: str, name: str) -> None:
        con.execute(f"COPY ({sql}) TO '{folder / name}' (FORMAT csv, DELIMITER '\t', HEADER, QUOTE '')")

    copy("SELECT * FROM (VALUES (47126, '48460', 70, 'kingdom', 'Plantae', true), "
         "(13, '48460/47126', 10, 'species', 'Iris tectorum', true)) "
         "t(taxon_id, ancestry, rank_level, rank, name, active)", "taxa.csv")  # fmt: skip
    copy("SELECT i AS observer_id, 'login' || i AS login, '' AS name FROM range(100) t(i)", "observers.csv")
    copy("SELECT 'o' || i AS observation_uuid, i % 100 AS observer_id, 13 AS taxon_id, "
         "CASE WHEN i % 3 = 0 THEN 'casual' ELSE 'research' END AS quality_grade FROM range(200000) t(i)",
         "observations.csv")  # fmt: skip
    copy("SELECT 'u' || i AS photo_uuid, 1000 + i AS photo_id, 'o' || (i * 2 // 3) AS observation_uuid, "
         "(i * 2 // 3) % 100 AS observer_id, 'jpg' AS extension, 'CC-BY' AS license FROM range(300000) t(i)",
         "photos.csv")  # fmt: skip
    ctx = CrawlContext(caption_style="dalip", duckdb=DuckDBConfig(threads=2))
    rows = statuses = 0
    expected = 1
    for batch in read_source_batches("inaturalist", {"directory": str(folder)}, ctx, batch_rows=8192):
        assert batch.column("input_row").to_pylist() == list(range(expected, expected + batch.num_rows))
        expected += batch.num_rows
        rows += batch.num_rows
        statuses += batch.column("status").to_pylist().count("pending")
    assert rows == 300_000
    assert statuses == sum((i * 2 // 3) % 3 != 0 for i in range(300_000))  # observation i is casual if i % 3 == 0


def test_a_large_gbif_download_crawls_in_multimedia_order_on_several_threads(tmp_path):
    # The DwC-A query joins 300,000 media rows to their occurrences on DuckDB's threads, as above.
    folder = tmp_path / "dwca"
    folder.mkdir()
    dwc, dc, gbif = "http://rs.tdwg.org/dwc/terms/", "http://purl.org/dc/terms/", "http://rs.gbif.org/terms/1.0/"
    core_terms = [gbif + "gbifID", dwc + "kingdom", gbif + "species", dwc + "taxonRank", dwc + "scientificName"]
    media_terms = [gbif + "gbifID", dc + "type", dc + "format", dc + "identifier", dc + "creator", dc + "license"]

    def block(tag: str, id_tag: str, row_type: str, location: str, terms: list[str]) -> str:
        fields = "".join(f'<field index="{i}" term="{term}"/>' for i, term in enumerate(terms))
        return (f'<{tag} encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" '
                f'ignoreHeaderLines="1" rowType="{row_type}"><files><location>{location}</location></files>'
                f'<{id_tag} index="0"/>{fields}</{tag}>')  # fmt: skip

    (folder / "meta.xml").write_text(
        '<?xml version="1.0" encoding="utf-8"?><archive xmlns="http://rs.tdwg.org/dwc/text/">'
        + block("core", "id", dwc + "Occurrence", "occurrence.txt", core_terms)
        + block("extension", "coreid", gbif + "Multimedia", "multimedia.txt", media_terms)
        + "</archive>"
    )
    con = duckdb.connect()
    con.execute(
        f"""COPY (SELECT 1000 + i AS gbifID, CASE WHEN i % 4 = 0 THEN 'Animalia' ELSE 'Plantae' END AS kingdom,
                         'Genus' || i % 50 || ' species' || i % 500 AS species, 'SPECIES' AS taxonRank,
                         'Genus' || i % 50 || ' species' || i % 500 || ' L.' AS scientificName
                  FROM range(150000) t(i))
            TO '{folder / "occurrence.txt"}' (FORMAT csv, DELIMITER '\t', HEADER, QUOTE '')"""
    )
    con.execute(
        f"""COPY (SELECT 1000 + i // 2 AS gbifID, 'StillImage' AS type, 'image/jpeg' AS format,
                         'https://media.example.org/' || i || '.jpg' AS identifier, 'Author ' || i % 90 AS creator,
                         'http://creativecommons.org/licenses/by/4.0/' AS license
                  FROM range(300000) t(i))
            TO '{folder / "multimedia.txt"}' (FORMAT csv, DELIMITER '\t', HEADER, QUOTE '')"""
    )
    ctx = CrawlContext(caption_style="dalip", duckdb=DuckDBConfig(threads=2))
    expected, pending = 1, 0
    for batch in read_source_batches("gbif_dwca", {"path": str(folder)}, ctx, batch_rows=8192):
        assert batch.column("input_row").to_pylist() == list(range(expected, expected + batch.num_rows))
        assert batch.column("url").to_pylist()[0] == f"https://media.example.org/{expected - 1}.jpg"
        expected += batch.num_rows
        pending += batch.column("status").to_pylist().count("pending")
    assert expected - 1 == 300_000
    assert pending == 300_000 - sum((i // 2) % 4 == 0 for i in range(300_000))  # animals' media are rejected
