import random

import duckdb
import pyarrow as pa
import pytest

from pipeline.core.schema import TAXONOMY_RANKS
from pipeline.sources import duck_rules
from pipeline.sources.captions import (
    CAPTION_STYLES,
    FALLBACKS,
    NoCaption,
    build_caption_variants,
    choose_caption,
)

IRIS = {
    "kingdom": "Plantae",
    "phylum": "Tracheophyta",
    "class": "Liliopsida",
    "order": "Asparagales",
    "family": "Iridaceae",
    "genus": "Iris",
    "species": "Iris tectorum",
}
TAXONOMIC = "Plantae Tracheophyta Liliopsida Asparagales Iridaceae Iris tectorum"


def test_paper_example_every_style():
    variants = build_caption_variants("Iris tectorum", "Wall iris", IRIS, None)
    assert variants == {
        "dalip": "Iris tectorum, commonly known as Wall iris.",  # the DALIP paper's own example
        "bioclip_scientific": "a photo of Iris tectorum.",
        "bioclip_scientific_common": "a photo of Iris tectorum with common name Wall iris.",
        "bioclip_taxonomic": f"a photo of {TAXONOMIC}.",
        "bioclip_taxonomic_common": f"a photo of {TAXONOMIC} with common name Wall iris.",
    }
    for style in CAPTION_STYLES[:-1]:
        assert choose_caption(variants, style) == (variants[style], style)


def test_missing_common_name_falls_back_and_says_so():
    variants = build_caption_variants("Iris tectorum", None, IRIS, None)
    assert variants["dalip"] == "Iris tectorum."
    assert "bioclip_scientific_common" not in variants
    assert choose_caption(variants, "bioclip_scientific_common") == ("a photo of Iris tectorum.", "bioclip_scientific")
    assert choose_caption(variants, "bioclip_taxonomic_common") == (f"a photo of {TAXONOMIC}.", "bioclip_taxonomic")


def test_partial_taxonomy_prints_known_ranks_only():
    variants = build_caption_variants("Iris tectorum", None, {"family": "Iridaceae", "genus": "Iris"}, None)
    assert variants["bioclip_taxonomic"] == "a photo of Iridaceae Iris tectorum."
    assert "bioclip_taxonomic" not in build_caption_variants(None, None, None, "alt text")


def test_general_rows_only_have_original():
    variants = build_caption_variants(None, None, None, "  a red   bicycle ")
    assert variants == {"original": "a red bicycle"}
    for style in CAPTION_STYLES:
        assert choose_caption(variants, style) == ("a red bicycle", "original")


def test_original_style_prefers_alt_text_then_template():
    assert choose_caption(build_caption_variants("Iris tectorum", None, None, "my iris"), "original")[0] == "my iris"
    assert choose_caption(build_caption_variants("Iris tectorum", None, None, None), "original") == (
        "Iris tectorum.",
        "dalip",
    )


def test_no_caption_and_unknown_style():
    with pytest.raises(NoCaption):
        choose_caption({}, "dalip")
    with pytest.raises(ValueError, match="unknown caption style"):
        choose_caption({"original": "x"}, "fancy")


NAMES = ["Iris tectorum", "Iris", " Iris  tectorum ", "Iris\u3000tectorum", "Iris\ttectorum", "Apis mellifera",
         "Zoë\u00a0x", "\x1cIris\x1ftectorum", "", None, "  ", "a'b \"c\"", "Iris tectorum alba",
         "ſpecies x"]  # fmt: skip
RANK_NAMES = ["Plantae", "Iris", " Iris ", "Iris\u3000", "", None, "Apis", "Tracheophyta", "Iridaceae", "x\u2003y"]


def random_taxon(rng) -> dict:
    taxonomy = None
    if rng.random() < 0.8:
        taxonomy = {rank: rng.choice(RANK_NAMES) for rank in TAXONOMY_RANKS}
        taxonomy["species"] = rng.choice(NAMES)
    return {
        "scientific_name": rng.choice(NAMES),
        "common_name": rng.choice(NAMES + ["Wall iris", " Western  honey bee "]),
        "taxonomy": taxonomy,
        "original_text": rng.choice([None, "", "  A  photo\u00a0of irises ", "alt"]),
    }


@pytest.mark.parametrize("style", CAPTION_STYLES)
def test_captions_made_in_sql_equal_pythons(style):
    # The crawl's SQL adapters make their captions in DuckDB, per taxon; they must be build_row's, value for value.
    rng = random.Random(len(style))
    rows = [random_taxon(rng) for _ in range(600)]
    con = duckdb.connect()
    duck_rules.register_udfs(con, ("http", "https"))
    con.register("inputs", pa.Table.from_pylist([{"k": str(i), **row} for i, row in enumerate(rows)]))
    made = con.sql(
        f"SELECT caption_variants, caption, caption_kind, caption_error "
        f"FROM ({duck_rules.caption_select('SELECT * FROM inputs', style)}) ORDER BY k::INT"
    )
    for row, (variants, caption, kind, error) in zip(rows, made.fetchall(), strict=True):
        expected = duck_rules.caption_for(row, style)
        assert (list(variants.items()) if variants else None, caption, kind, error) == expected, row
    duck_rules.create_fallback_caption_table(con, "fallback", "SELECT * FROM inputs", style)
    taxon_rows = con.sql("SELECT * FROM fallback").fetchall()
    assert len(taxon_rows) == len(rows)
    for scientific, common, taxonomy, variants, before, _, after, _ in taxon_rows:
        made = build_caption_variants(scientific, common, taxonomy, None)
        assert (list(variants.items()) if variants else None) == (list(made.items()) or None)
        order = FALLBACKS[style]
        cut = order.index("original") if "original" in order else len(order)
        assert before == next((made[k] for k in order[:cut] if made.get(k)), None)
        assert after == next((made[k] for k in order[cut + 1 :] if made.get(k)), None)
