"""Fixture writers for the source tests, in the exact published formats (iNaturalist TSV, GBIF DwC-A)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from pipeline.sources.base import CrawlContext

PHOTOS = [
    "photo_uuid",
    "photo_id",
    "observation_uuid",
    "observer_id",
    "extension",
    "license",
    "width",
    "height",
    "position",
]
OBSERVATIONS = [
    "observation_uuid",
    "observer_id",
    "latitude",
    "longitude",
    "positional_accuracy",
    "taxon_id",
    "quality_grade",
    "observed_on",
]
TAXA = ["taxon_id", "ancestry", "rank_level", "rank", "name", "active"]
OBSERVERS = ["observer_id", "login", "name"]

# Real top-level iNaturalist ids; Iris tectorum's lineage below the class is synthetic.
INAT_TAXA = [
    ["48460", "", "100", "stateofmatter", "Life", "true"],
    ["47126", "48460", "70", "kingdom", "Plantae", "true"],
    ["211194", "48460/47126", "60", "phylum", "Tracheophyta", "true"],
    ["47163", "48460/47126/211194", "50", "class", "Liliopsida", "true"],
    ["10", "48460/47126/211194/47163", "40", "order", "Asparagales", "true"],
    ["11", "48460/47126/211194/47163/10", "30", "family", "Iridaceae", "true"],
    ["12", "48460/47126/211194/47163/10/11", "20", "genus", "Iris", "true"],
    ["13", "48460/47126/211194/47163/10/11/12", "10", "species", "Iris tectorum", "true"],
    ["1", "48460", "70", "kingdom", "Animalia", "true"],
    ["14", "48460/1", "10", "species", "Apis mellifera", "true"],
]


def tsv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    path.write_text("\n".join("\t".join(r) for r in [header, *rows]) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def ctx() -> CrawlContext:
    return CrawlContext(caption_style="dalip")


@pytest.fixture
def inat_dir(tmp_path: Path) -> Path:
    """A 5-photo export: ok, all-rights-reserved, animal, needs_id, genus-level."""
    folder = tmp_path / "inat"
    folder.mkdir()
    tsv(
        folder / "photos.csv",
        PHOTOS,
        [
            ["u1", "101", "o1", "7", "jpeg", "CC-BY-NC", "2048", "1536", "0"],
            ["u2", "102", "o1", "7", "jpg", "", "2048", "1536", "1"],
            ["u3", "103", "o2", "8", "jpeg", "CC0", "800", "600", "0"],
            ["u4", "104", "o3", "8", "png", "CC-BY", "800", "600", "0"],
            ["u5", "105", "o4", "7", "jpeg", "CC-BY-SA", "800", "600", "0"],
        ],
    )
    tsv(
        folder / "observations.csv",
        OBSERVATIONS,
        [
            ["o1", "7", "35.6", "139.7", "10", "13", "research", "2023-05-01"],
            ["o2", "8", "35.6", "139.7", "10", "14", "research", "2023-05-01"],
            ["o3", "8", "35.6", "139.7", "10", "13", "needs_id", "2023-05-01"],
            ["o4", "7", "35.6", "139.7", "10", "12", "research", "2023-05-01"],
        ],
    )
    tsv(folder / "taxa.csv", TAXA, INAT_TAXA)
    tsv(folder / "observers.csv", OBSERVERS, [["7", "jdoe", "Jane Doe"], ["8", "kiwi", ""]])
    (folder / "common_names.csv").write_text('taxon_id,common_name\n13,Wall iris\n14,"Western honey bee"\n')
    return folder


DWC, DC, GBIF = "http://rs.tdwg.org/dwc/terms/", "http://purl.org/dc/terms/", "http://rs.gbif.org/terms/1.0/"
OCC_TERMS = [
    GBIF + "gbifID",
    DWC + "occurrenceID",
    DC + "references",
    DWC + "kingdom",
    DWC + "phylum",
    DWC + "class",
    DWC + "order",
    DWC + "family",
    DWC + "genus",
    GBIF + "species",
    DWC + "specificEpithet",
    DWC + "taxonRank",
    DWC + "scientificName",
    DWC + "vernacularName",
    DC + "license",
]
MEDIA_TERMS = [
    GBIF + "gbifID",
    DC + "type",
    DC + "format",
    DC + "identifier",
    DC + "references",
    DC + "title",
    DC + "creator",
    DC + "license",
    DC + "rightsHolder",
]
IRIS = ["Plantae", "Tracheophyta", "Liliopsida", "Asparagales", "Iridaceae", "Iris", "Iris tectorum", "tectorum"]


def meta_xml(core_terms=OCC_TERMS, media_terms=MEDIA_TERMS, core_file="occurrence.txt", media_file="multimedia.txt"):
    def block(tag, id_tag, row_type, location, terms):
        fields = "\n".join(f'    <field index="{i}" term="{t}"/>' for i, t in enumerate(terms))
        return (
            f'  <{tag} encoding="UTF-8" fieldsTerminatedBy="\\t" linesTerminatedBy="\\n" fieldsEnclosedBy="" '
            f'ignoreHeaderLines="1" rowType="{row_type}">\n    <files><location>{location}</location></files>\n'
            f'    <{id_tag} index="0" />\n{fields}\n  </{tag}>'
        )

    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<archive xmlns="http://rs.tdwg.org/dwc/text/" metadata="eml.xml">\n'
        + block("core", "id", DWC + "Occurrence", core_file, core_terms)
        + "\n"
        + block("extension", "coreid", GBIF + "Multimedia", media_file, media_terms)
        + "\n</archive>\n"
    )


OCCURRENCES = [
    ["1001", "occ-1", "", *IRIS[:6], IRIS[6], IRIS[7], "SPECIES", "Iris tectorum Maxim.", "Wall iris", "CC_BY_4_0"],
    [
        "1002",
        "occ-2",
        "https://example.org/occ/2",
        "Animalia",
        "Arthropoda",
        "Insecta",
        "Hymenoptera",
        "Apidae",
        "Bombus",
        "Bombus terrestris",
        "terrestris",
        "SPECIES",
        "Bombus terrestris (Linnaeus, 1758)",
        "",
        "CC0_1_0",
    ],
    ["1003", "occ-3", "", *IRIS[:6], "", "", "GENUS", "Iris", "", "CC_BY_4_0"],
]
BY_NC = "http://creativecommons.org/licenses/by-nc/4.0/legalcode"
MEDIA = [
    ["1001", "StillImage", "image/jpeg", "https://img.example.org/a.jpg", "", "Iris in bloom", "Ann", BY_NC, "Ann Lee"],
    ["1001", "Sound", "audio/mpeg", "https://img.example.org/a.mp3", "", "", "Ann", "CC_BY_4_0", ""],
    ["1001", "StillImage", "image/jpeg", "https://img.example.org/b.jpg", "", "", "Ann", "", ""],
    ["1002", "StillImage", "image/jpeg", "https://img.example.org/c.jpg", "", "", "Bo", "CC0_1_0", ""],
    ["1003", "StillImage", "image/jpeg", "https://img.example.org/d.jpg", "", "", "Cy", "CC_BY_4_0", ""],
    ["1001", "StillImage", "image/jpeg", "https://img.example.org/e.jpg", "", "", "Ann", "GPL-3.0", ""],
]


def write_dwca(path: Path, members: dict[str, str | bytes] | None = None, **overrides: str | bytes | None) -> Path:
    """A GBIF-download-shaped DwC-A; ``overrides`` replace (or with None, drop) members."""

    def table(terms, rows):
        return "\n".join("\t".join(r) for r in [[t.rsplit("/", 1)[1] for t in terms], *rows]) + "\n"

    files = members or {
        "meta.xml": meta_xml(),
        "occurrence.txt": table(OCC_TERMS, OCCURRENCES),
        "multimedia.txt": table(MEDIA_TERMS, MEDIA),
    }
    files = {**files, **{k.replace("_", "."): v for k, v in overrides.items()}}
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in files.items():
            if data is not None:
                archive.writestr(name, data)
    return path
