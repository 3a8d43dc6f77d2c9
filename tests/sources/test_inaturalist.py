import gzip

import pyarrow as pa
import pytest
from source_fixtures import OBSERVATIONS, PHOTOS, tsv

from pipeline.core.schema import CANDIDATE_SCHEMA
from pipeline.sources import inaturalist
from pipeline.sources.base import SourceError
from pipeline.sources.registry import read_source, read_source_batches


def crawl(folder, ctx, **options):
    return list(
        read_source("inaturalist", {"directory": str(folder), "common_names": "common_names.csv", **options}, ctx)
    )


def test_happy_path_and_every_row_accounted_for(inat_dir, ctx):
    rows = crawl(inat_dir, ctx)
    pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA)
    assert [r["input_row"] for r in rows] == [1, 2, 3, 4, 5]
    ok = rows[0]
    assert ok["url"] == "https://inaturalist-open-data.s3.amazonaws.com/photos/101/medium.jpeg"
    assert ok["page_url"] == "https://www.inaturalist.org/photos/101"
    assert ok["source_record_id"] == "101:o1"
    assert ok["caption"] == "Iris tectorum, commonly known as Wall iris."
    assert ok["taxonomy"] == {
        "kingdom": "Plantae",
        "phylum": "Tracheophyta",
        "class": "Liliopsida",
        "order": "Asparagales",
        "family": "Iridaceae",
        "genus": "Iris",
        "species": "Iris tectorum",
    }
    assert (ok["license"], ok["attribution"], ok["status"]) == (
        "cc-by-nc",
        "(c) Jane Doe, some rights reserved (CC BY-NC)",
        "pending",
    )
    errors = [r["error"] for r in rows[1:]]
    assert all(r["status"] == "rejected" for r in rows[1:])
    photos = str(inat_dir / "photos.csv")
    assert errors[0] == f"{photos} row 2, field license: no open license (empty)"
    assert errors[1] == f"{photos} row 3, field taxa.ancestry: taxon filter: kingdom Animalia not in [Plantae]"
    assert errors[2].endswith("field observations.quality_grade: quality grade needs_id not in [research]")
    assert errors[3].endswith("field taxa.rank: taxon filter: rank genus is coarser than min_rank species")
    assert rows[2]["rights_holder"] == "kiwi"  # no name -> login


def test_filters_are_configurable_and_size_base_url(inat_dir, ctx):
    rows = crawl(
        inat_dir,
        ctx,
        quality_grades=[],
        min_rank=None,
        kingdoms=[],
        size="small",
        base_url="http://mirror.invalid/inat/",
        url_rewrite={"http://mirror.invalid/": "http://127.0.0.1:1/"},
    )
    assert [r["status"] for r in rows] == ["pending", "rejected", "pending", "pending", "pending"]
    assert rows[3]["url"] == "http://127.0.0.1:1/inat/photos/104/small.png"


def test_gzipped_tables_are_read(inat_dir, ctx):
    for name in ("photos", "observations"):
        path = inat_dir / f"{name}.csv"
        (inat_dir / f"{name}.csv.gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    assert len(crawl(inat_dir, ctx)) == 5


def test_missing_required_column_names_file_and_column(inat_dir, ctx):
    tsv(inat_dir / "observations.csv", [c for c in OBSERVATIONS if c != "quality_grade"], [])
    with pytest.raises(SourceError, match=r"observations.csv: missing required column\(s\) \['quality_grade'\]; found"):
        crawl(inat_dir, ctx)


def test_empty_file_and_missing_table(inat_dir, ctx):
    (inat_dir / "photos.csv").write_text("")
    with pytest.raises(SourceError, match=r"photos.csv: empty file; expected a header"):
        crawl(inat_dir, ctx)
    (inat_dir / "taxa.csv").unlink()
    with pytest.raises(SourceError, match=r"missing taxa.csv \(or taxa.csv.gz\)"):
        crawl(inat_dir, ctx)


def test_undecodable_bytes_name_file_and_line(inat_dir, ctx):
    path = inat_dir / "photos.csv"
    path.write_bytes(path.read_bytes().replace(b"CC0", b"CC\xff0"))
    with pytest.raises(SourceError, match=r"photos.csv line 4: bytes not valid utf-8"):
        crawl(inat_dir, ctx)


def test_short_row_and_dangling_references_are_rejected_rows(inat_dir, ctx):
    tsv(
        inat_dir / "photos.csv",
        PHOTOS,
        [["u9", "109", "o1", "7", "jpeg"], ["u8", "108", "nope", "99", "jpeg", "CC0", "1", "1", "0"]],
    )
    rows = crawl(inat_dir, ctx)
    assert rows[0]["error"].endswith("row 1, field (row): line 2: expected 9 fields, found 5")
    assert "field observer_id: observer '99' not in observers.csv" in rows[1]["error"]
    assert inaturalist.Config.from_dict({"directory": "x"}).base_url.startswith("https://")


def test_repeated_ids_in_lookup_tables_name_file_row_and_id(inat_dir, ctx):
    observations = inat_dir / "observations.csv"
    observations.write_text(observations.read_text() + "o1\t8\t0\t0\t1\t14\tresearch\t2023-05-02\n")
    with pytest.raises(
        SourceError, match=r"observations.csv row 5 \(line 6\), field observation_uuid: id 'o1' repeats an earlier row"
    ):
        crawl(inat_dir, ctx)
    # A canonical UUID (held as 16 bytes) repeated; its capitalised spelling is another id, no repeat.
    uuid = "8f14e45f-ceea-467f-a0b6-c3d1e1e2e3e4"
    lines = observations.read_text().splitlines()[:-1]
    lines += [f"{u}\t8\t0\t0\t1\t14\tresearch\t2023-05-02" for u in (uuid, uuid.upper(), "x", uuid)]
    observations.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        SourceError, match=rf"observations.csv row 8 \(line 9\), field observation_uuid: id '{uuid}' repeats an"
    ):
        crawl(inat_dir, ctx)
    observations.write_text("\n".join(lines[:-4]) + "\n")
    taxa = inat_dir / "taxa.csv"
    taxa.write_text(taxa.read_text() + "13\t48460/1\t10\tspecies\tApis mellifera\ttrue\n")
    with pytest.raises(SourceError, match=r"taxa.csv row 11 \(line 12\), field taxon_id: id '13' repeats"):
        crawl(inat_dir, ctx)


def test_batches_hold_at_most_the_batch_size_the_crawl_asks_for(inat_dir, ctx):
    # The crawl's batch size bounds what the adapter hands over at a time (and so the crawl's peak memory).
    options = {"directory": str(inat_dir), "common_names": "common_names.csv"}
    batches = list(read_source_batches("inaturalist", options, ctx, batch_rows=2))
    assert [b.num_rows for b in batches] == [2, 2, 1]
    assert [r for b in batches for r in b.column("input_row").to_pylist()] == [1, 2, 3, 4, 5]
