import io
import tarfile
import zipfile

import pyarrow as pa
import pytest
from source_fixtures import MEDIA_TERMS, meta_xml, write_dwca

from pipeline.core.schema import CANDIDATE_SCHEMA
from pipeline.sources import dwca_meta, gbif_dwca
from pipeline.sources.base import SourceError
from pipeline.sources.chunks import split_partition
from pipeline.sources.registry import read_source, read_source_batches


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


def test_short_and_undecodable_core_rows_name_file_row_and_line(tmp_path, ctx):
    """On both paths: the SQL one (the core streamed into a table) and the Python one (which the SQL path hands an
    undecodable file to, so that the error names the line)."""
    from pipeline.sources import gbif_dwca

    core = zipfile.ZipFile(write_dwca(tmp_path / "ok.zip")).read("occurrence.txt").decode()
    lines = core.splitlines(keepends=True)
    short = "".join([*lines[:2], "\n", "1009\tPlantae\n", *lines[2:]])  # a blank line, then a short row
    undecodable = (core + "1010\tPlant\xe6\n").encode("latin-1")
    cases = {"short.zip": (short, r"row 2 \(line 4\): expected at least \d+ fields, found 2"),
             "bad.zip": (undecodable, rf"line {len(lines) + 1}: bytes not valid UTF-8")}  # fmt: skip
    for name, (text, error) in cases.items():
        config = gbif_dwca.Config.from_dict({"path": str(write_dwca(tmp_path / name, occurrence_txt=text))})
        for read in (gbif_dwca.read_batches, gbif_dwca.read):
            with pytest.raises(SourceError, match=rf"{name}!occurrence.txt {error}"):
                list(read(config, ctx))


def test_occurrences_without_media_are_counted_and_give_no_row(tmp_path, ctx, caplog):
    from pipeline.sources import gbif_dwca

    core = zipfile.ZipFile(write_dwca(tmp_path / "ok.zip")).read("occurrence.txt").decode()
    lonely = core.splitlines()[1].split("\t")
    extra = "".join("\t".join([f"{9000 + i}", *lonely[1:]]) + "\n" for i in range(3))
    config = gbif_dwca.Config.from_dict({"path": str(write_dwca(tmp_path / "more.zip", occurrence_txt=core + extra))})
    with caplog.at_level("INFO", logger="pipeline.sources.dwca_sql"):
        rows = [row for batch in gbif_dwca.read_batches(config, ctx) for row in batch.to_pylist()]
    assert len(rows) == 6 and not any(row["source_record_id"].startswith("900") for row in rows)
    assert "more.zip!occurrence.txt: 3 occurrence(s) have no multimedia row" in caplog.text


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


AC, DCE, XMP = "http://rs.tdwg.org/ac/terms/", "http://purl.org/dc/elements/1.1/", "http://ns.adobe.com/xap/1.0/rights/"
DWC, DC = "http://rs.tdwg.org/dwc/terms/", "http://purl.org/dc/terms/"


def _block(tag, id_tag, row_type, location, terms):
    fields = "".join(f'<field index="{i}" term="{t}"/>' for i, t in enumerate(terms))
    return (
        f'<{tag} encoding="UTF-8" fieldsTerminatedBy="," linesTerminatedBy="\\n" fieldsEnclosedBy="&quot;" '
        f'ignoreHeaderLines="1" rowType="{row_type}"><files><location>{location}</location></files>'
        f'<{id_tag} index="0"/>{fields}</{tag}>'
    )


def _csv(terms, rows):
    import csv

    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerows([[t.rsplit("/", 1)[1] for t in terms], *rows])
    return out.getvalue()


CORE_TERMS = [DWC + "occurrenceID", DWC + "kingdom", DWC + "genus", DWC + "scientificName", DWC + "taxonRank",
              DWC + "basisOfRecord", DC + "license", DWC + "associatedMedia"]  # fmt: skip
CORE_ROWS = [
    ["o1", "Plantae", "Quercus", "Quercus agrifolia", "species", "HumanObservation", "CC-BY-4.0",
     "https://img.example.org/q1.jpg | https://img.example.org/q2.jpg"],
    ["o2", "Plantae", "Pinus", "Pinus coulteri", "species", "PreservedSpecimen", "CC0", ""],
    ["o3", "Plantae", "Sequoia", "Sequoia sempervirens", "species", "HumanObservation", "CC-BY-NC-4.0",
     "https://img.example.org/s,1.jpg"],
]  # fmt: skip
AC_TERMS = [DWC + "occurrenceID", DC + "identifier", AC + "accessURI", DCE + "type", DCE + "format",
            AC + "variantLiteral", XMP + "UsageTerms", XMP + "Owner", DC + "title",
            AC + "furtherInformationURL"]  # fmt: skip
AC_ROWS = [
    ["o1", "m1", "https://img.example.org/m1-best.jpg", "StillImage", "image/jpeg", "Best Quality",
     "http://creativecommons.org/licenses/by-nc/4.0/", "Herbarium X", "Quercus leaf", "https://portal.example.org/m1"],
    ["o1", "m1", "https://img.example.org/m1-thumb.jpg", "StillImage", "image/jpeg", "Thumbnail",
     "http://creativecommons.org/licenses/by-nc/4.0/", "Herbarium X", "", ""],
    ["o2", "m2", "https://img.example.org/m2.jpg", "http://purl.org/dc/dcmitype/StillImage", "image/jpeg", "",
     "http://creativecommons.org/publicdomain/zero/1.0/", "", "", ""],
    ["o3", "m3", "", "Sound", "audio/mpeg", "", "CC0", "", "", ""],
]  # fmt: skip


def _archive(tmp_path, extension=None):
    """An occurrence-core archive (comma-separated, quoted), with an Audubon Core extension or none."""
    blocks = _block("core", "id", DWC + "Occurrence", "occurrence.csv", CORE_TERMS)
    files = {"occurrence.csv": _csv(CORE_TERMS, CORE_ROWS)}
    if extension == "audubon":
        blocks += _block("extension", "coreid", AC + "Multimedia", "multimedia.csv", AC_TERMS)
        files["multimedia.csv"] = _csv(AC_TERMS, AC_ROWS)
    files["meta.xml"] = f'<?xml version="1.0"?><archive xmlns="http://rs.tdwg.org/dwc/text/">{blocks}</archive>'
    return write_dwca(tmp_path / "dwca.zip", members=files)


def test_audubon_core_media_access_uri_variants_and_rights(tmp_path, ctx):
    rows = crawl(_archive(tmp_path, "audubon"), ctx, basis_of_record=["HumanObservation"])
    assert [r["url"] for r in rows] == [
        "https://img.example.org/m1-best.jpg",  # ac:accessURI, not the dcterms:identifier "m1"
        "https://img.example.org/m1-thumb.jpg",
        "https://img.example.org/m2.jpg",
        "m3",  # no accessURI: the identifier, which is no URL here (the row is rejected anyway: a sound)
    ]
    best, thumb, specimen, sound = rows
    assert best["status"] == "pending" and best["license"] == "cc-by-nc-4.0"  # xmpRights:UsageTerms
    assert (best["rights_holder"], best["original_text"], best["page_url"]) == (
        "Herbarium X",  # xmpRights:Owner
        "Quercus leaf",
        "https://portal.example.org/m1",  # ac:furtherInformationURL
    )
    assert best["source_record_id"] == "o1:https://img.example.org/m1-best.jpg"
    assert thumb["error"].endswith("field variantLiteral: variant 'Thumbnail' not in [Best Quality, Good Quality, "
                                   "Medium Quality]")  # fmt: skip
    assert specimen["error"].endswith(
        "field basisOfRecord: basis of record PreservedSpecimen not in [HumanObservation]"
    )  # herbarium sheets left out on request
    assert "field type: media type Sound is not StillImage" in sound["error"]
    assert crawl(_archive(tmp_path, "audubon"), ctx)[2]["status"] == "pending"  # no basis filter by default


def test_associated_media_in_the_core_one_row_per_url(tmp_path, ctx):
    rows = crawl(_archive(tmp_path), ctx)
    assert [(r["url"], r["input_row"]) for r in rows] == [
        ("https://img.example.org/q1.jpg", 1),
        ("https://img.example.org/q2.jpg", 1),
        ("https://img.example.org/s,1.jpg", 3),  # split on "|" only: a comma belongs to the URL
    ]  # o2 has no associatedMedia: no row
    assert all(r["status"] == "pending" for r in rows[:2]) and rows[0]["license"] == "cc-by-4.0"
    assert rows[0]["scientific_name"] == "Quercus agrifolia" and rows[0]["input_file"].endswith("!occurrence.csv")
    assert rows[0]["source_record_id"] == "o1:https://img.example.org/q1.jpg"
    assert rows[2]["license"] == "cc-by-nc-4.0"


def test_media_option_picks_the_source_and_names_what_is_missing(tmp_path, ctx):
    archive = _archive(tmp_path, "audubon")
    assert len(crawl(archive, ctx, media="associated_media")) == 3  # the core's URLs although AC is there
    only_multimedia = (
        r"no images: no <extension> with rowType http://rs.gbif.org/terms/1.0/Multimedia "
        r"\(found \['http://rs.tdwg.org/ac/terms/Multimedia'\]\)"
    )
    with pytest.raises(SourceError, match=only_multimedia):
        crawl(archive, ctx, media="multimedia")
    with pytest.raises(ValueError, match="media 'flickr' unknown"):
        crawl(archive, ctx, media="flickr")
    core_only = [t for t in CORE_TERMS if t != DWC + "associatedMedia"]
    files = {
        "meta.xml": '<?xml version="1.0"?><archive xmlns="http://rs.tdwg.org/dwc/text/">'
        + _block("core", "id", DWC + "Occurrence", "occurrence.csv", core_only)
        + "</archive>",
        "occurrence.csv": _csv(core_only, [row[:-1] for row in CORE_ROWS]),
    }
    with pytest.raises(SourceError, match=r"no images: .* and no http://rs.tdwg.org/dwc/terms/associatedMedia"):
        crawl(write_dwca(tmp_path / "bare.zip", members=files), ctx)


def test_associated_media_archive_in_partitions_holds_every_row_once(tmp_path, ctx):
    archive = _archive(tmp_path)
    config = gbif_dwca.Config.from_dict({"path": str(archive), "name": "plantnet", "partitions": 2})
    rows = [row for part in gbif_dwca.parts(config) for row in gbif_dwca.read(config, ctx, split_partition(part)[1:])]
    assert len(rows) == 3
    assert sorted(rows, key=lambda r: r["input_row"]) == crawl(archive, ctx)


def test_a_partition_without_media_rows_is_no_error_but_an_archive_without_any_is(tmp_path, ctx):
    archive = write_dwca(tmp_path / "dwca.zip")
    options = {"path": str(archive), "name": "plantnet", "partitions": 40}
    parts = gbif_dwca.parts(gbif_dwca.Config.from_dict(options))
    counts = [sum(b.num_rows for b in read_source_batches("gbif_dwca", options, ctx, 8, part=p)) for p in parts]
    assert 0 in counts and sum(counts) == len(crawl(archive, ctx))  # SQL path: some of 40 partitions are empty
    empty = write_dwca(tmp_path / "header.zip", multimedia_txt="gbifID\ttype\n")
    first = gbif_dwca.parts(gbif_dwca.Config(str(empty), partitions=2))[0]
    with pytest.raises(SourceError, match=r"header.zip!multimedia.txt: no data rows \(ignoreHeaderLines=1\)"):
        list(read_source_batches("gbif_dwca", {"path": str(empty), "partitions": 2}, ctx, 8, part=first))


def test_an_archive_left_to_the_python_path_leaves_no_scratch_copies(tmp_path):
    # DuckDB cannot read the multimedia file (not UTF-8): the Python path reads it and names the line; the copies
    # of the packed archive's files made for DuckDB are removed, not left in the spill folder.
    from pipeline.core.config import DuckDBConfig
    from pipeline.sources.base import CrawlContext

    spill = tmp_path / "spill"
    ctx = CrawlContext(caption_style="dalip", duckdb=DuckDBConfig(temp_directory=str(spill)))
    media = "gbifID\ttype\n1001\tStill\xff".encode("latin-1")
    options = {"path": str(write_dwca(tmp_path / "dwca.zip", multimedia_txt=media)), "name": "plantnet"}
    with pytest.raises(SourceError, match=r"dwca.zip!multimedia.txt line 2: bytes not valid UTF-8"):
        list(read_source_batches("gbif_dwca", options, ctx))
    assert [p.name for p in spill.iterdir()] == []
