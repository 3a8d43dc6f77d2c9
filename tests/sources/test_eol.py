"""EOL media manifest adapter: files written in the published format (Ruby CSV, EOL's header names)."""

import csv
import gzip
import io

import pyarrow as pa
import pytest

from pipeline.core.schema import CANDIDATE_SCHEMA, sample_id_for
from pipeline.sources import eol
from pipeline.sources.base import ConfigError, SourceError
from pipeline.sources.licenses import normalize_license

HEADER = [
    "EOL content ID",
    "EOL page ID",
    "Medium Source URL",
    "EOL Full-Size Copy URL",
    "License Name",
    "Copyright Owner",
]
COPY = "https://content.eol.org/data/media/be/4a/08/30.d4f396d82dcceeb0615c194f99421c0c.jpg"
SOURCE = "https://www.inaturalist.org/photos/101/original.jpg"
MANIFEST = [
    ["15263823", "1147423", SOURCE, COPY, "cc-by-nc-sa 3.0", "Doe, Jane"],  # ok; owner with a comma is quoted
    ["15263824", "1147423", "", "https://content.eol.org/data/media/1.jpg", "cc-by-4.0", ""],  # no source URL
    ["15263825", "1147423", "https://example.org/only-source.jpg", "", "public domain", "Museum"],  # no EOL copy
    ["15263826", "1147423", "", "", "cc-by-3.0", "Museum"],  # no URL at all
    ["15263827", "1147423", "https://example.org/2.jpg", "https://content.eol.org/2.jpg",
     "No known copyright restrictions", "Flickr Commons"],  # a statement, not a license
    ["15263828", "1147423", "https://example.org/3.jpg", "https://content.eol.org/3.jpg", "", ""],  # no license
    ["15263829", "46559197", "https://example.org/4.jpg", "https://content.eol.org/4.jpg", "cc-by-sa-2.0", "A"],
    ["15263830", "999", "https://example.org/5.jpg", "https://content.eol.org/5.jpg", "cc-by-2.0", "B"],  # not in pages
]  # fmt: skip
PAGES_HEADER = ["page_id", "scientific_name", "common_name", "taxon_rank", "kingdom", "phylum", "class", "order",
                "family", "genus", "species"]  # fmt: skip
PAGES = [
    ["1147423", "Iris tectorum", "Wall iris", "Species", "Plantae", "Tracheophyta", "Liliopsida", "Asparagales",
     "Iridaceae", "Iris", "Iris tectorum"],
    ["46559197", "Apis mellifera", "Western honey bee", "species", "Animalia", "Arthropoda", "Insecta", "Hymenoptera",
     "Apidae", "Apis", "Apis mellifera"],
]  # fmt: skip


def write_csv(path, header, rows, gz=False):
    """Quoted CSV as Ruby's CSV writes it (quotes only where needed, \\n line ends)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows([header, *rows])
    data = buffer.getvalue().encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


@pytest.fixture
def export(tmp_path):
    write_csv(tmp_path / "media_manifest.csv.gz", HEADER, MANIFEST, gz=True)
    write_csv(tmp_path / "pages.csv", PAGES_HEADER, PAGES)
    return tmp_path


def crawl(ctx, **options):
    return list(eol.read(eol.Config.from_dict(options), ctx))


def test_happy_path_url_ids_license_caption(export, ctx):
    rows = crawl(ctx, path=str(export / "media_manifest.csv.gz"), pages="pages.csv")
    assert len(rows) == len(MANIFEST)  # one candidate per manifest row
    pa.Table.from_pylist(rows, schema=CANDIDATE_SCHEMA)
    first = rows[0]
    assert first["status"] == "pending" and first["error"] is None
    assert first["url"] == COPY  # the EOL full-size copy by default
    assert first["source_record_id"] == f"1147423:{SOURCE}"
    assert first["sample_id"] == sample_id_for("eol", f"1147423:{SOURCE}")
    assert first["page_url"] == "https://eol.org/pages/1147423"
    assert (first["license"], first["license_url"]) == (
        "cc-by-nc-sa-3.0",
        "https://creativecommons.org/licenses/by-nc-sa/3.0/",
    )
    assert first["rights_holder"] == "Doe, Jane"
    assert first["attribution"] == "(c) Doe, Jane, some rights reserved (CC BY-NC-SA 3.0)"
    assert (first["caption"], first["caption_kind"]) == ("Iris tectorum, commonly known as Wall iris.", "dalip")
    assert first["taxon_rank"] == "species" and first["common_name"] == "Wall iris"
    assert first["taxonomy"]["kingdom"] == "Plantae" and first["taxonomy"]["species"] == "Iris tectorum"
    assert (first["source"], first["domain"], first["input_row"]) == ("eol", "plant", 1)
    assert first["input_file"].endswith("media_manifest.csv.gz")
    # no source URL: the id falls back to the (unstable) content id
    assert rows[1]["source_record_id"] == "1147423:eol-content-15263824" and rows[1]["status"] == "pending"
    assert rows[1]["attribution"] == "(c) unknown author, some rights reserved (CC BY 4.0)"
    # no EOL copy: the source URL is fetched; EOL's "public domain" is the Public Domain Mark
    assert rows[2]["url"] == "https://example.org/only-source.jpg" and rows[2]["license"] == "pdm-1.0"
    assert rows[2]["attribution"] == "Museum, no rights reserved (Public Domain Mark 1.0)"


def test_rejections_name_file_row_and_field(export, ctx):
    rows = crawl(ctx, path=str(export / "media_manifest.csv.gz"), pages="pages.csv")
    errors = {row["input_row"]: row["error"] for row in rows if row["status"] == "rejected"}
    manifest = str(export / "media_manifest.csv.gz")
    assert errors[4] == (
        f"{manifest} row 4, field EOL Full-Size Copy URL, Medium Source URL: both empty; no image URL to fetch"
    )
    assert errors[5] == f"{manifest} row 5, field license: unknown license code 'No known copyright restrictions'"
    assert rows[4]["license"] == "No known copyright restrictions"  # the raw value kept for audit
    assert errors[6] == f"{manifest} row 6, field license: no open license (empty)"
    assert errors[7] == f"{manifest} row 7, field pages.kingdom: taxon filter: kingdom Animalia not in [Plantae]"
    assert errors[8] == f"{manifest} row 8, field EOL page ID: page 999 not in the pages file {export / 'pages.csv'}"
    assert set(errors) == {4, 5, 6, 7, 8}
    every = crawl(ctx, path=str(export / "media_manifest.csv.gz"), pages="pages.csv", kingdoms=[])
    assert (
        every[6]["status"] == "pending"
        and every[6]["caption"] == "Apis mellifera, commonly known as Western honey bee."
    )


def test_prefer_source_and_fallback(export, ctx):
    rows = crawl(ctx, path=str(export / "media_manifest.csv.gz"), pages="pages.csv", prefer="source")
    assert rows[0]["url"] == SOURCE
    assert rows[1]["url"] == "https://content.eol.org/data/media/1.jpg"  # no source URL: the EOL copy
    assert rows[3]["error"].endswith(
        "field Medium Source URL, EOL Full-Size Copy URL: both empty; no image URL to fetch"
    )
    default = crawl(ctx, path=str(export / "media_manifest.csv.gz"), pages="pages.csv")
    assert [r["sample_id"] for r in rows] == [r["sample_id"] for r in default]  # ids do not depend on `prefer`


def test_url_rewrite(export, ctx):
    rows = crawl(
        ctx,
        path=str(export / "media_manifest.csv.gz"),
        pages="pages.csv",
        url_rewrite={"https://content.eol.org/": "http://mirror.local/eol/"},
    )
    assert rows[0]["url"] == "http://mirror.local/eol/data/media/be/4a/08/30.d4f396d82dcceeb0615c194f99421c0c.jpg"


def test_short_row_and_bad_page_id(tmp_path, ctx):
    path = write_csv(
        tmp_path / "m.csv",
        HEADER,
        [["1", "1147423", SOURCE, COPY, "cc-by-4.0"], ["2", "abc", "", COPY, "cc-by-4.0", "X"]],
    )
    write_csv(tmp_path / "pages.csv", PAGES_HEADER, PAGES)
    rows = crawl(ctx, path=str(path), pages=str(tmp_path / "pages.csv"))
    assert rows[0]["error"] == f"{path} row 1, field (row): line 2: expected 6 fields, found 5"
    assert rows[1]["error"] == f"{path} row 2, field EOL page ID: 'abc' is not an EOL page id (digits)"
    assert rows[1]["page_url"] is None and rows[1]["source_record_id"] == "abc:eol-content-2"


def test_without_pages_caption_rule_rejects(export, ctx):
    with pytest.raises(ConfigError, match=r"kingdoms \['Plantae'\] need a pages file"):
        eol.Config.from_dict({"path": str(export / "media_manifest.csv.gz")})
    rows = crawl(ctx, path=str(export / "media_manifest.csv.gz"), kingdoms=[])
    assert rows[0]["scientific_name"] is None and rows[0]["taxonomy"] is None
    assert rows[0]["error"].endswith(
        "row 1, field caption: no caption for style 'dalip': need a scientific name or original text"
    )


def test_pages_columns_renamed_treeoflife_style(tmp_path, ctx):
    path = write_csv(tmp_path / "m.csv", HEADER, MANIFEST[:1])
    write_csv(tmp_path / "names.csv", ["eol_page_id", "scientific_name", "common", "kingdom"],
              [["1147423", "Iris tectorum", "Wall iris", "Plantae"]])  # fmt: skip
    rows = crawl(
        ctx, path=str(path), pages="names.csv", pages_columns={"page_id": "eol_page_id", "common_name": "common"}
    )
    assert rows[0]["caption"] == "Iris tectorum, commonly known as Wall iris."
    assert rows[0]["taxonomy"] == {
        "kingdom": "Plantae",
        **dict.fromkeys(["phylum", "class", "order", "family", "genus", "species"]),
    }
    with pytest.raises(ConfigError, match=r"pages_columns names unknown field\(s\) \['name'\]"):
        eol.Config.from_dict({"path": str(path), "pages": "names.csv", "pages_columns": {"name": "x"}})


def test_missing_columns_are_source_errors(tmp_path, ctx):
    path = write_csv(tmp_path / "m.csv", HEADER[:3] + HEADER[4:], [["1", "2", SOURCE, "cc-by", "X"]])
    with pytest.raises(SourceError, match=r"m\.csv: missing required column\(s\) \['EOL Full-Size Copy URL'\]"):
        crawl(ctx, path=str(path), kingdoms=[])
    good = write_csv(tmp_path / "good.csv", HEADER, MANIFEST[:1])
    write_csv(tmp_path / "pages.csv", ["page_id", "scientific_name"], [["1147423", "Iris tectorum"]])
    with pytest.raises(SourceError, match=r"pages\.csv: missing required column\(s\) \['kingdom'\]"):
        crawl(ctx, path=str(good), pages="pages.csv")  # the kingdom filter needs the column
    assert crawl(ctx, path=str(good), pages="pages.csv", kingdoms=[])[0]["caption"] == "Iris tectorum."


def test_bad_pages_file_is_a_source_error(tmp_path, ctx):
    good = write_csv(tmp_path / "m.csv", HEADER, MANIFEST[:1])
    write_csv(tmp_path / "pages.csv", PAGES_HEADER, [PAGES[0], PAGES[0]])
    with pytest.raises(SourceError, match=r"pages\.csv row 2 \(line 3\), field page_id: page '1147423' repeats"):
        crawl(ctx, path=str(good), pages="pages.csv")
    write_csv(tmp_path / "pages.csv", PAGES_HEADER, [PAGES[0][:5]])
    with pytest.raises(SourceError, match=r"pages\.csv row 1 \(line 2\): expected 11 fields, found 5"):
        crawl(ctx, path=str(good), pages="pages.csv")


@pytest.mark.parametrize("text", ["", ",".join(HEADER) + "\n"])
def test_empty_manifest(tmp_path, ctx, text):
    path = tmp_path / "m.csv"
    path.write_text(text)
    with pytest.raises(SourceError, match=r"m\.csv: (empty file|no data rows)"):
        crawl(ctx, path=str(path), kingdoms=[])


def test_sample_ids_stable_across_runs_and_row_order(tmp_path, export, ctx):
    first = crawl(ctx, path=str(export / "media_manifest.csv.gz"), pages="pages.csv")
    again = crawl(ctx, path=str(export / "media_manifest.csv.gz"), pages="pages.csv")
    reordered = write_csv(export / "reordered.csv", HEADER, MANIFEST[::-1])
    backwards = crawl(ctx, path=str(reordered), pages="pages.csv")
    assert [r["sample_id"] for r in first] == [r["sample_id"] for r in again]
    assert [r["sample_id"] for r in first] == [r["sample_id"] for r in backwards][::-1]
    assert len({r["sample_id"] for r in first}) == len(MANIFEST)


def test_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="prefer 'thumbnail' unknown"):
        eol.Config.from_dict({"path": "m.csv", "kingdoms": [], "prefer": "thumbnail"})
    with pytest.raises(ConfigError, match="kingdoms must be a list"):
        eol.Config.from_dict({"path": "m.csv", "pages": "p.csv", "kingdoms": "Plantae"})
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['size'\]"):
        eol.Config.from_dict({"path": "m.csv", "size": "large"})
    assert eol.pages_path(eol.Config.from_dict({"path": "s3://b/eol/m.csv", "pages": "p.csv"})) == "s3://b/eol/p.csv"
    assert (
        eol.pages_path(eol.Config.from_dict({"path": str(tmp_path / "m.csv"), "pages": "/abs/p.csv"})) == "/abs/p.csv"
    )


@pytest.mark.parametrize(
    "raw, code",
    [
        ("cc-by-nc-sa 2.0", "cc-by-nc-sa-2.0"),
        ("cc-by-3.0", "cc-by-3.0"),
        ("cc-by", "cc-by"),
        ("cc-0-1.0", "cc0-1.0"),
        ("public domain", "pdm-1.0"),
        ("cc-publicdomain", "pdm-1.0"),  # added to the table for EOL
        ("http://creativecommons.org/licenses/by-nc/2.0/", "cc-by-nc-2.0"),
    ],
)
def test_eol_license_names(raw, code):
    assert normalize_license(raw).code == code
