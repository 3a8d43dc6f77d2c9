import io
import tarfile
import zipfile

import pyarrow as pa
import pytest
from source_fixtures import MEDIA_TERMS, meta_xml, write_dwca

from pipeline.core.schema import CANDIDATE_SCHEMA
from pipeline.sources import dwca_meta
from pipeline.sources.base import SourceError
from pipeline.sources.registry import read_source


def crawl(path, ctx, **options):
    return list(read_source("gbif_dwca", {"path": str(path), "name": "plantnet", **options}, ctx))


def test_happy_path_reads_columns_through_meta_xml(tmp_path, ctx):
    rows = crawl(write_dwca(tmp_path / "dwca.zip"), ctx)
    pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA)
    assert len(rows) == 6  # one per multimedia row
    first = rows[0]
    # occurrence + media URL: the id does not depend on the row order of a regenerated download
    assert first["source_record_id"] == "1001:https://img.example.org/a.jpg"
    assert rows[2]["source_record_id"].startswith("1001:") and rows[2]["url"] in rows[2]["source_record_id"]
    assert first["url"] == "https://img.example.org/a.jpg"
    assert first["page_url"] == "https://www.gbif.org/occurrence/1001"
    assert first["scientific_name"] == "Iris tectorum" and first["taxon_rank"] == "species"
    assert first["caption"] == "Iris tectorum, commonly known as Wall iris."
    assert first["original_text"] == "Iris in bloom"
    assert first["taxonomy"]["order"] == "Asparagales" and first["taxonomy"]["species"] == "Iris tectorum"
    assert (first["license"], first["rights_holder"]) == ("cc-by-nc-4.0", "Ann Lee")
    assert first["input_file"].endswith("dwca.zip!multimedia.txt") and first["input_row"] == 1
    assert rows[2]["license"] == "cc-by-4.0" and rows[2]["rights_holder"] == "Ann"  # occurrence license, creator
    assert rows[3]["page_url"] == "https://example.org/occ/2"


def test_rejections_name_row_and_field(tmp_path, ctx):
    rows = crawl(write_dwca(tmp_path / "dwca.zip"), ctx)
    assert [r["status"] for r in rows] == ["pending", "rejected", "pending", "rejected", "rejected", "rejected"]
    assert rows[1]["error"].endswith("multimedia.txt row 2, field type: media type Sound is not StillImage")
    assert rows[3]["error"].endswith("row 4, field kingdom: taxon filter: kingdom Animalia not in [Plantae]")
    assert rows[4]["error"].endswith(
        "row 5, field taxonRank: taxon filter: rank genus is coarser than min_rank species"
    )
    assert rows[5]["error"].endswith("row 6, field license: unknown license code 'GPL-3.0'")


def test_columns_follow_meta_xml_not_position(tmp_path, ctx):
    shuffled = [MEDIA_TERMS[0], *reversed(MEDIA_TERMS[1:])]
    reorder = [0, *range(len(MEDIA_TERMS) - 1, 0, -1)]
    lines = [
        "\t".join(["gbifID", *(t.rsplit("/", 1)[1] for t in shuffled[1:])]),
        "\t".join(
            ["1001", "StillImage", "image/jpeg", "https://img.example.org/z.jpg", "", "", "Ann", "CC0_1_0", ""][i]
            for i in reorder
        ),
    ]
    path = write_dwca(tmp_path / "dwca.zip", meta_xml=meta_xml(media_terms=shuffled), multimedia_txt="\n".join(lines))
    (row,) = crawl(path, ctx)
    assert (row["url"], row["license"], row["status"]) == ("https://img.example.org/z.jpg", "cc0-1.0", "pending")


def test_unpacked_folder_works(tmp_path, ctx):
    zipfile.ZipFile(write_dwca(tmp_path / "dwca.zip")).extractall(tmp_path / "unpacked")
    assert len(crawl(tmp_path / "unpacked", ctx)) == 6


def test_broken_zip(tmp_path, ctx):
    path = tmp_path / "broken.zip"
    path.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(SourceError, match=r"broken.zip: not a readable zip \(.*\) or tar archive"):
        crawl(path, ctx)


def _repack(zip_path, out, mode: str, folder: str = "") -> None:
    """The members of a zip DwC-A written into ``out`` (a zip or tar, per ``mode``) under ``folder``."""
    with zipfile.ZipFile(zip_path) as source:
        members = {name: source.read(name) for name in source.namelist()}
    if mode == "zip":
        with zipfile.ZipFile(out, "w") as archive:
            for name, data in members.items():
                archive.writestr(folder + name, data)
        return
    with tarfile.open(out, mode) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(folder + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize(
    "name, mode, folder",
    [("nested.zip", "zip", "dwca-2024/"), ("a.tgz", "w:gz", ""), ("b.tar.gz", "w:gz", "export/"), ("c.tar", "w", "")],
)
def test_archives_packed_in_a_folder_or_as_tar_read_like_the_zip(tmp_path, ctx, name, mode, folder):
    """As python-dwca-reader's test archives (and many publishers) pack them: meta.xml one folder down, or a tarball."""
    expected = crawl(write_dwca(tmp_path / "dwca.zip"), ctx)
    _repack(tmp_path / "dwca.zip", tmp_path / name, mode, folder)
    rows = crawl(tmp_path / name, ctx)
    assert rows[0]["input_file"].endswith(f"{name}!{folder}multimedia.txt")
    same = ("sample_id", "url", "status", "license", "caption", "scientific_name", "taxonomy")
    assert [[r[k] for k in same] for r in rows] == [[r[k] for k in same] for r in expected]
    relabel = {str(tmp_path / "dwca.zip") + "!": f"{tmp_path / name}!{folder}"}
    assert [r["error"] for r in rows] == [
        r["error"] and r["error"].replace(*next(iter(relabel.items()))) for r in expected
    ]


def test_an_archive_with_two_meta_xml_folders_is_refused(tmp_path, ctx):
    write_dwca(tmp_path / "dwca.zip")
    _repack(tmp_path / "dwca.zip", tmp_path / "one.zip", "zip", "one/")
    with zipfile.ZipFile(tmp_path / "one.zip", "a") as archive:
        archive.writestr("two/meta.xml", meta_xml())
    with pytest.raises(SourceError, match=r"one.zip: meta.xml in several folders \(one/meta.xml, two/meta.xml\)"):
        crawl(tmp_path / "one.zip", ctx)


def test_missing_and_invalid_meta_xml(tmp_path, ctx):
    with pytest.raises(SourceError, match=r"a.zip!meta.xml: missing"):
        crawl(write_dwca(tmp_path / "a.zip", meta_xml=None), ctx)
    with pytest.raises(SourceError, match=r"b.zip!meta.xml line 3: invalid XML \(mismatched tag"):
        crawl(write_dwca(tmp_path / "b.zip", meta_xml='<?xml version="1.0"?>\n<archive><core>\n</archive>'), ctx)
    bad_index = meta_xml().replace(
        '<field index="3" term="http://purl.org/dc/terms/identifier"/>',
        '<field index="three" term="http://purl.org/dc/terms/identifier"/>',
    )
    with pytest.raises(
        SourceError, match=r"c.zip!meta.xml: <extension .*term='http://purl.org/dc/terms/identifier'.*index='three'"
    ):
        crawl(write_dwca(tmp_path / "c.zip", meta_xml=bad_index), ctx)


def test_meta_xml_pointing_to_missing_file(tmp_path, ctx):
    path = write_dwca(tmp_path / "dwca.zip", multimedia_txt=None)
    with pytest.raises(
        SourceError, match=r"dwca.zip!meta.xml: <extension .*declares file 'multimedia.txt', which is not in"
    ):
        crawl(path, ctx)


def test_missing_required_term(tmp_path, ctx):
    terms = [t for t in MEDIA_TERMS if not t.endswith("/identifier")]
    with pytest.raises(
        SourceError, match=r"meta.xml: <extension> multimedia.txt has no <field> for required term.*identifier"
    ):
        crawl(write_dwca(tmp_path / "dwca.zip", meta_xml=meta_xml(media_terms=terms)), ctx)


def test_undecodable_bytes_and_empty_file(tmp_path, ctx):
    media = "gbifID\ttype\n1001\tStill\xff".encode("latin-1")
    with pytest.raises(SourceError, match=r"dwca.zip!multimedia.txt line 2: bytes not valid UTF-8"):
        crawl(write_dwca(tmp_path / "dwca.zip", multimedia_txt=media), ctx)
    for name, empty in (("empty.zip", ""), ("header.zip", "gbifID\ttype\n")):
        with pytest.raises(SourceError, match=rf"{name}!multimedia.txt: no data rows \(ignoreHeaderLines=1\)"):
            crawl(write_dwca(tmp_path / name, multimedia_txt=empty), ctx)


def test_short_media_row_and_unknown_coreid_are_rejected_rows(tmp_path, ctx):
    media = "header\n1001\tStillImage\n9999\tStillImage\timage/jpeg\thttps://x.org/a.jpg\t\t\t\tCC0_1_0\t\n"
    rows = crawl(write_dwca(tmp_path / "dwca.zip", multimedia_txt=media), ctx)
    assert rows[0]["error"].endswith("row 1, field (row): line 2: expected 9 fields, found 2")
    assert rows[1]["error"].endswith("row 2, field coreid: occurrence '9999' not in occurrence.txt")


def test_multi_character_quote_names_meta_xml_and_attribute(tmp_path, ctx):
    bad = meta_xml().replace('fieldsEnclosedBy=""', 'fieldsEnclosedBy="ab"', 1)
    with pytest.raises(SourceError, match=r"dwca.zip!meta.xml: <core .*: fieldsEnclosedBy 'ab' must be one character"):
        crawl(write_dwca(tmp_path / "dwca.zip", meta_xml=bad), ctx)
    same = meta_xml().replace('fieldsEnclosedBy=""', 'fieldsEnclosedBy="\\t"', 1)
    with pytest.raises(SourceError, match=r"meta.xml: <core .*fieldsEnclosedBy and fieldsTerminatedBy are both"):
        crawl(write_dwca(tmp_path / "same.zip", meta_xml=same), ctx)


def test_utf16_data_file_names_file_and_both_encodings(tmp_path, ctx):
    media = zipfile.ZipFile(write_dwca(tmp_path / "ok.zip")).read("multimedia.txt").decode()
    with pytest.raises(
        SourceError, match=r"bom.zip!multimedia.txt: declared encoding UTF-8, but the file is UTF-16 \(byte-order mark"
    ):
        crawl(write_dwca(tmp_path / "bom.zip", multimedia_txt=media.encode("utf-16")), ctx)
    with pytest.raises(SourceError, match=r"le.zip!multimedia.txt: declared encoding UTF-8, but the file is UTF-16"):
        crawl(write_dwca(tmp_path / "le.zip", multimedia_txt=media.encode("utf-16-le")), ctx)
    declared = meta_xml().replace('encoding="UTF-8"', 'encoding="UTF-16"')
    with pytest.raises(
        SourceError, match=r"declared.zip!meta.xml: <core .*attribute encoding \(of occurrence.txt\).*'UTF-16'"
    ):
        crawl(write_dwca(tmp_path / "declared.zip", meta_xml=declared), ctx)


def test_oversized_meta_xml_is_refused(tmp_path, ctx, monkeypatch):
    cap = len(meta_xml()) + 100  # the real limit is 10 MiB; a small one keeps the test fast
    monkeypatch.setattr(dwca_meta, "MAX_META_XML_BYTES", cap)
    padded = meta_xml().replace("<archive ", "<!--" + "x" * 200 + "-->\n<archive ", 1)
    with pytest.raises(SourceError, match=rf"dwca.zip!meta.xml: larger than {cap} bytes"):
        crawl(write_dwca(tmp_path / "dwca.zip", meta_xml=padded), ctx)
    assert len(crawl(write_dwca(tmp_path / "small.zip"), ctx)) == 6  # the real descriptor still fits


def test_repeated_core_id_names_file_row_and_id(tmp_path, ctx):
    core = zipfile.ZipFile(write_dwca(tmp_path / "ok.zip")).read("occurrence.txt").decode()
    first_data_line = core.splitlines()[1]
    with pytest.raises(
        SourceError, match=r"dwca.zip!occurrence.txt row 4 \(line 5\), field id \(column 0\): core id '1001' repeats"
    ):
        crawl(write_dwca(tmp_path / "dwca.zip", occurrence_txt=core + first_data_line + "\n"), ctx)


def test_the_core_is_looked_up_on_disk_one_media_batch_at_a_time(tmp_path, ctx, monkeypatch):
    """Batches of 2 media rows give the same rows as one batch; the core's database file is gone afterwards."""
    from pipeline.core.config import DuckDBConfig
    from pipeline.sources import gbif_dwca
    from pipeline.sources.base import CrawlContext

    archive = write_dwca(tmp_path / "dwca.zip")
    spill = tmp_path / "spill"
    ctx = CrawlContext(duckdb=DuckDBConfig(temp_directory=str(spill)))
    whole = crawl(archive, ctx)
    monkeypatch.setattr(gbif_dwca, "BATCH_ROWS", 2)
    seen = []
    lookup = gbif_dwca._CoreOnDisk.lookup
    monkeypatch.setattr(gbif_dwca._CoreOnDisk, "lookup", lambda self, ids: seen.append(len(ids)) or lookup(self, ids))
    assert crawl(archive, ctx) == whole
    assert seen == [2, 2, 2]  # six media rows, three lookups of two
    assert not list(spill.glob("gbif-core-*"))
