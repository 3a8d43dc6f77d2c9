import dataclasses

import pyarrow as pa
import pytest
import yaml

from pipeline.core.schema import CANDIDATE_SCHEMA, sample_id_for
from pipeline.sources import registry
from pipeline.sources.base import ConfigError, CrawlContext, build_row, rewrite_url
from pipeline.sources.inaturalist import Config as InatConfig

# The documentation every registry entry must carry (a custom registry's entry included).
DOCUMENTED = {"description": "d", "format": "f", "get": "g", "fields": {"url": "u"}, "licenses": "l"}

BASE = {
    "source": "src",
    "source_record_id": "r1",
    "domain": "plant",
    "url": "https://example.org/a.jpg",
    "scientific_name": "Iris tectorum",
    "common_name": "Wall iris",
    "license": "CC-BY",
    "rights_holder": "Jane",
    "input_file": "export.csv",
    "input_row": 3,
}


def test_build_row_fills_every_column_and_fits_the_schema(ctx):
    row = build_row(BASE, ctx)
    assert list(row) == CANDIDATE_SCHEMA.names
    assert row["sample_id"] == sample_id_for("src", "r1")
    assert (row["caption"], row["caption_kind"], row["status"]) == (
        "Iris tectorum, commonly known as Wall iris.",
        "dalip",
        "pending",
    )
    assert row["license"] == "cc-by" and row["attribution"] == "(c) Jane, some rights reserved (CC BY)"
    pa.Table.from_pylist([row], schema=CANDIDATE_SCHEMA)


@pytest.mark.parametrize("url", ["ftp://example.org/a.jpg", "javascript:alert(1)", "file:///etc/passwd", "a.jpg"])
def test_disallowed_scheme_is_a_rejected_row_naming_file_row_field(ctx, url):
    row = build_row({**BASE, "url": url}, ctx)
    assert row["status"] == "rejected"
    assert row["error"].startswith("export.csv row 3, field url: URL scheme")


def test_unknown_license_is_a_rejected_row_with_the_code(ctx):
    row = build_row({**BASE, "license": "WTFPL"}, ctx)
    assert row["status"] == "rejected"
    assert row["error"] == "export.csv row 3, field license: unknown license code 'WTFPL'"
    assert row["license"] == "WTFPL"


def test_first_reason_wins_and_sample_id_survives(ctx):
    row = build_row({**BASE, "source_record_id": None, "url": "ftp://x/y.jpg", "license": ""}, ctx)
    assert "field url" in row["error"]
    assert row["sample_id"] == sample_id_for("src", "ftp://x/y.jpg")


def test_url_rewrite_longest_prefix():
    rules = {"http://a.invalid/": "http://127.0.0.1:9/", "http://a.invalid/x/": "http://mirror/"}
    assert rewrite_url("http://a.invalid/x/1.jpg", rules) == "http://mirror/1.jpg"
    assert rewrite_url("http://a.invalid/y.jpg", rules) == "http://127.0.0.1:9/y.jpg"
    assert rewrite_url("https://other/y.jpg", rules) == "https://other/y.jpg"


def test_context_and_config_validation():
    with pytest.raises(ConfigError, match="caption_style"):
        CrawlContext(caption_style="nope")
    with pytest.raises(ConfigError, match=r"unknown option\(s\) \['dirctory'\]"):
        InatConfig.from_dict({"dirctory": "x"})
    with pytest.raises(ConfigError, match=r"missing required option\(s\) \['directory'\]"):
        InatConfig.from_dict({})
    with pytest.raises(ConfigError, match="min_rank"):
        InatConfig.from_dict({"directory": "x", "min_rank": "speces"})


def test_registry_lists_and_loads_adapters(tmp_path):
    table = registry.adapters()
    assert table["inaturalist"] == "pipeline.sources.inaturalist"
    assert set(table) >= {"inaturalist", "gbif_dwca", "url_caption_pool", "local_folder", "eol", "commons"}
    for name in table:
        module = registry.load_adapter(name)
        assert hasattr(module, "Config") and callable(module.read)
    with pytest.raises(
        ConfigError, match="unknown source adapter 'wikimedia'; known adapters: commons, eol, gbif_dwca, inat"
    ):
        registry.load_adapter("wikimedia")
    custom = tmp_path / "sources.yaml"
    custom.write_text(yaml.safe_dump({"adapters": {"mine": {"module": "pipeline.sources.pool", **DOCUMENTED}}}))
    assert registry.load_adapter("mine", custom).__name__ == "pipeline.sources.pool"
    custom.write_text("adapters:\n  mine:\n    modul: x\n")
    with pytest.raises(ConfigError, match="adapters.mine needs a 'module'"):
        registry.load_adapter("mine", custom)


def test_list_options_refuse_a_bare_string():
    with pytest.raises(ConfigError, match="kingdoms must be a list"):
        InatConfig.from_dict({"directory": "x", "kingdoms": "Plantae"})
    with pytest.raises(ConfigError, match="quality_grades must be a list"):
        InatConfig.from_dict({"directory": "x", "quality_grades": "research"})


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("http://[::1/a.jpg", "Invalid IPv6 URL"),
        ("http://example.org:99999/a.jpg", "Port out of range"),
        ("http://example.org:abc/a.jpg", "Port could not be cast"),
    ],
)
def test_unparseable_url_is_a_rejected_row_not_a_crash(ctx, url, why):
    row = build_row({**BASE, "url": url}, ctx)
    assert row["status"] == "rejected"
    assert row["error"].startswith(f"export.csv row 3, field url: invalid URL ({why}")


def test_url_surrounding_whitespace_is_stripped(ctx):
    row = build_row({**BASE, "source_record_id": None, "url": " \thttps://example.org/a.jpg\r\n"}, ctx)
    assert (row["url"], row["status"]) == ("https://example.org/a.jpg", "pending")
    assert row["sample_id"] == sample_id_for("src", "https://example.org/a.jpg")
    assert build_row({**BASE, "url": "   "}, ctx)["error"].endswith("field url: empty image URL")


@pytest.mark.parametrize(
    ("iri", "uri"),
    [
        ("https://upload.wikimedia.org/wikipedia/commons/a/ab/Rosa canina ü.jpg",
         "https://upload.wikimedia.org/wikipedia/commons/a/ab/Rosa%20canina%20%C3%BC.jpg"),
        ("http://bücher.example/a.jpg", "http://xn--bcher-kva.example/a.jpg"),
    ],
)  # fmt: skip
def test_an_iri_is_stored_as_its_uri_and_the_original_is_kept(ctx, iri, uri):
    row = build_row({**BASE, "source_record_id": None, "url": iri}, ctx)
    assert (row["url"], row["url_original"], row["status"]) == (uri, iri, "pending")
    assert row["sample_id"] == sample_id_for("src", iri)  # ids stay those of the URL as published
    plain = build_row(BASE, ctx)
    assert plain["url_original"] is None  # kept only where it differs


def test_an_invalid_internationalised_host_is_a_rejected_row(ctx):
    row = build_row({**BASE, "url": "http://a..b\u200d.example/x.jpg"}, ctx)
    assert row["status"] == "rejected" and "field url" in row["error"]


def test_every_shipped_adapter_is_documented():
    table = registry.load_registry()
    assert set(table) >= {"inaturalist", "gbif_dwca", "url_caption_pool", "local_folder", "eol", "commons"}
    for name, info in table.items():
        for text in (info.description, info.format, info.get, info.licenses):
            assert isinstance(text, str) and text.strip(), name
        assert {"url", "license"} <= set(info.fields) <= set(CANDIDATE_SCHEMA.names), name
        assert all(isinstance(source, str) and source.strip() for source in info.fields.values()), name
        options = registry.adapter_options(name)
        assert [o.name for o in options] == [f.name for f in dataclasses.fields(registry.load_adapter(name).Config)]
    inat = table["inaturalist"]
    assert inat.fields["license"] == "photos.license" and "observers.name" in inat.fields["rights_holder"]
    assert "all rights reserved -> rejected" in inat.licenses
    by_name = {o.name: o for o in registry.adapter_options("inaturalist")}
    assert by_name["directory"].required and by_name["size"].default == "medium"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"get": None}, r"adapters\.mine is undocumented: missing key\(s\) \['get'\]"),
        (
            {"fields": None, "licenses": None},
            r"adapters\.mine is undocumented: missing key\(s\) \['fields', 'licenses'\]",
        ),
        ({"licence": "l"}, r"adapters\.mine has unknown key\(s\) \['licence'\]"),
        ({"get": ""}, r"adapters\.mine\.get: expected a non-empty string, got ''"),
        ({"licenses": ["cc0"]}, r"adapters\.mine\.licenses: expected a non-empty string"),
        (
            {"fields": {"url": "u", "image_url": "x"}},
            r"adapters\.mine\.fields: \['image_url'\] not manifest \(candidate\)",
        ),
        ({"fields": ["url"]}, r"adapters\.mine\.fields: expected a mapping of manifest column"),
        ({"fields": {"url": ""}}, r"adapters\.mine\.fields\.url: expected a non-empty string"),
    ],
)
def test_an_undocumented_or_mistyped_registry_entry_names_file_and_adapter(tmp_path, change, message):
    entry = {"module": "pipeline.sources.pool", **DOCUMENTED, **change}
    custom = tmp_path / "sources.yaml"
    custom.write_text(yaml.safe_dump({"adapters": {"mine": {k: v for k, v in entry.items() if v is not None}}}))
    with pytest.raises(ConfigError, match=message) as info:
        registry.load_registry(custom)
    assert str(custom) in str(info.value)
    with pytest.raises(ConfigError, match=message):  # a recipe naming it fails the same way
        registry.load_adapter("mine", custom)
