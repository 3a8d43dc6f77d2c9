import pytest

from pipeline.sources.captions import CAPTION_STYLES, NoCaption, build_caption_variants, choose_caption

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
