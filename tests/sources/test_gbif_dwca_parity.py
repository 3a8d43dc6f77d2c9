"""The DwC-A media rows' SQL path gives the same rows as the Python path (row by row, every column), on seeded
hostile GBIF-shaped archives (unquoted TSV), Audubon Core ones, and under several configurations."""

from __future__ import annotations

import random

import pytest
from source_fixtures import write_dwca

from pipeline.sources import gbif_dwca
from pipeline.sources.base import CrawlContext
from pipeline.sources.registry import read_source_batches

DWC, DC, GBIF = "http://rs.tdwg.org/dwc/terms/", "http://purl.org/dc/terms/", "http://rs.gbif.org/terms/1.0/"
AC, DCE, XMP = "http://rs.tdwg.org/ac/terms/", "http://purl.org/dc/elements/1.1/", "http://ns.adobe.com/xap/1.0/rights/"
CORE = [GBIF + "gbifID", DC + "references", DWC + "kingdom", DWC + "phylum", DWC + "family", DWC + "genus",
        GBIF + "species", DWC + "specificEpithet", DWC + "taxonRank", DWC + "scientificName", DWC + "vernacularName",
        DC + "license", DC + "rightsHolder", DWC + "basisOfRecord"]  # fmt: skip
MULTIMEDIA = [GBIF + "gbifID", DC + "type", DC + "format", DC + "identifier", DC + "references", DC + "title",
              DC + "description", DC + "creator", DC + "license", DC + "rightsHolder"]  # fmt: skip
AUDUBON = [DWC + "occurrenceID", DC + "identifier", AC + "accessURI", DCE + "type", DCE + "format",
           AC + "variantLiteral", XMP + "UsageTerms", XMP + "Owner", DC + "title",
           AC + "furtherInformationURL"]  # fmt: skip

TEXT = ["", "Iris", "Ïris  tectorum", " spaced ", "a'b", 'q"', "back\\s", "\u3000x\u00a0", "x" * 3]
KINGDOMS = ["Plantae", "Animalia", "", "plantae"]
RANKS = ["SPECIES", "species", "GENUS", "", "Variety", "ſpecies", "FORM"]
TYPES = ["StillImage", "http://purl.org/dc/dcmitype/StillImage", "Sound", "", " stillimage ", "MovingImage"]
FORMATS = ["image/jpeg", "", "audio/mpeg", "image/png"]
LICENSES = ["CC_BY_4_0", "", "http://creativecommons.org/licenses/by-nc/4.0/legalcode", "CC0_1_0", "GPL-3.0",
            "All rights reserved", "cc-by-sa"]  # fmt: skip
URLS = ["https://img.example.org/{}.jpg", "", "ftp://x/{}.jpg", "https://img.example.org/ü {}.jpg",
        " https://img.example.org/{}.png ", "http://[::1/{}", "https://img.example.org/a%zz{}"]  # fmt: skip
VARIANTS = ["", "Best Quality", "Thumbnail", "good quality", " Offline "]
BASIS = ["HumanObservation", "PreservedSpecimen", "", "HUMAN_OBSERVATION"]


def _core_rows(rng: random.Random, n: int) -> list[list[str]]:
    rows = []
    for i in range(n):
        rows.append([str(1000 + i), rng.choice(["", f"https://ex.org/occ/{i}"]), rng.choice(KINGDOMS),
                     rng.choice(["Tracheophyta", ""]), rng.choice(["Iridaceae", ""]), rng.choice(["Iris", "", "Ïris"]),
                     rng.choice(["Iris tectorum", "", "Iris x"]), rng.choice(["tectorum", ""]), rng.choice(RANKS),
                     rng.choice(["Iris tectorum Maxim.", "", "Iris L."]), rng.choice(["Wall iris", "", " roof  iris "]),
                     rng.choice(LICENSES), rng.choice(TEXT), rng.choice(BASIS)])  # fmt: skip
    return rows


def _media_rows(rng: random.Random, n: int, cores: int, audubon: bool) -> list[list[str]]:
    rows = []
    for i in range(n):
        core_id = str(1000 + rng.randrange(cores + 2)) if rng.random() < 0.95 else rng.choice(["", "x'y"])
        url = rng.choice(URLS).format(i)
        if audubon:
            row = [core_id, f"m{i}", url, rng.choice(TYPES), rng.choice(FORMATS), rng.choice(VARIANTS),
                   rng.choice(LICENSES), rng.choice(TEXT), rng.choice(TEXT),
                   rng.choice(["", f"https://p/{i}"])]  # fmt: skip
        else:
            row = [core_id, rng.choice(TYPES), rng.choice(FORMATS), url, rng.choice(["", f"https://p/{i}"]),
                   rng.choice(TEXT), rng.choice(TEXT), rng.choice(TEXT), rng.choice(LICENSES),
                   rng.choice(TEXT)]  # fmt: skip
        if rng.random() < 0.05:
            row = row[: rng.randrange(1, len(row))]  # a short row
        rows.append(row)
    return rows


def _archive(tmp_path, seed: int, audubon: bool):
    rng = random.Random(seed)
    media_terms, row_type = (AUDUBON, AC + "Multimedia") if audubon else (MULTIMEDIA, GBIF + "Multimedia")

    headerless = seed == 2  # ignoreHeaderLines="0", CRLF line ends and a byte order mark first

    def block(tag, id_tag, kind, location, terms):
        fields = "".join(f'<field index="{i}" term="{t}"/>' for i, t in enumerate(terms))
        return (f'<{tag} encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" '
                f'ignoreHeaderLines="{0 if headerless else 1}" rowType="{kind}"><files><location>{location}'
                f'</location></files><{id_tag} index="0"/>{fields}</{tag}>')  # fmt: skip

    def table(terms, rows):
        if headerless:
            return "\ufeff" + "".join("\t".join(r) + "\r\n" for r in rows)
        text = "\n".join("\t".join(r) for r in [[t.rsplit("/", 1)[1] for t in terms], *rows]) + "\n"
        return text.replace("\n", "\n\n", 1) if seed % 2 else text  # a blank line after the header

    files = {
        "meta.xml": '<?xml version="1.0"?><archive xmlns="http://rs.tdwg.org/dwc/text/">'
        + block("core", "id", DWC + "Occurrence", "occurrence.txt", CORE)
        + block("extension", "coreid", row_type, "multimedia.txt", media_terms)
        + "</archive>",
        "occurrence.txt": table(CORE, _core_rows(rng, 30)),
        "multimedia.txt": table(media_terms, _media_rows(rng, 150, 30, audubon)),
    }
    return write_dwca(tmp_path / f"a{seed}.zip", members=files)


CONFIGS = [
    {},
    {"kingdoms": [], "min_rank": None, "variants": []},
    {
        "kingdoms": ["Plantae", "Animalia"],
        "min_rank": "genus",
        "basis_of_record": ["HumanObservation"],
        "url_rewrite": {"https://img.example.org/": "http://127.0.0.1:1/"},
    },  # fmt: skip
]


@pytest.mark.parametrize("audubon", [False, True], ids=["multimedia", "audubon"])
@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("config", CONFIGS, ids=[f"config{i}" for i in range(len(CONFIGS))])
@pytest.mark.parametrize("style", ["dalip", "original", "bioclip_taxonomic_common"])
def test_sql_rows_equal_python_rows(tmp_path, audubon, seed, config, style):
    path = _archive(tmp_path, seed, audubon)
    options = gbif_dwca.Config.from_dict({"path": str(path), "name": "g", **config})
    ctx = CrawlContext(caption_style=style)
    python = list(gbif_dwca.read(options, ctx))
    sql = [row for batch in gbif_dwca.read_batches(options, ctx) for row in batch.to_pylist()]
    assert len(sql) == len(python) == 150
    for mine, theirs in zip(sql, python, strict=True):
        mine["caption_variants"] = dict(mine["caption_variants"]) if mine["caption_variants"] else None
        assert mine == theirs


def _rows(batches) -> list[dict]:
    rows = [row for batch in batches for row in batch.to_pylist()]
    for row in rows:
        row["caption_variants"] = dict(row["caption_variants"]) if row["caption_variants"] else None
    return rows


@pytest.mark.parametrize("audubon", [False, True], ids=["multimedia", "audubon"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hash_partitions_hold_every_media_row_once_on_both_paths(tmp_path, audubon, seed):
    """``partitions: 3``: the parts' rows together are the whole archive's (short rows, unknown occurrences and
    blank lines included), each part in media-file order; SQL and Python put every row in the same part."""
    path = _archive(tmp_path, seed, audubon)
    options = {"path": str(path), "name": "g", "kingdoms": [], "min_rank": None}
    ctx = CrawlContext()
    whole = list(gbif_dwca.read(gbif_dwca.Config.from_dict(options), ctx))
    partitioned = {**options, "partitions": 3}
    config = gbif_dwca.Config.from_dict(partitioned)
    parts = gbif_dwca.parts(config)
    assert parts == [f"{path}#partition={k}/3" for k in (1, 2, 3)]
    sql = [_rows(read_source_batches("gbif_dwca", partitioned, ctx, 16, part=part)) for part in parts]
    python = [list(gbif_dwca.read(config, ctx, (k, 3))) for k in (1, 2, 3)]
    assert sql == python
    assert all(len(rows) > 20 for rows in sql)
    for rows in sql:
        assert [r["input_row"] for r in rows] == sorted(r["input_row"] for r in rows)
    assert sorted((row for rows in sql for row in rows), key=lambda r: r["input_row"]) == whole
