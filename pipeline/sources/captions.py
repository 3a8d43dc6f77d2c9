"""Caption templates: every caption style a row can have, and the recipe's choice among them.

Styles (``../shared/DESIGN.md`` section 4):

=============================  =====================================================================
``dalip``                      ``"Iris tectorum, commonly known as Wall iris."`` (the DALIP paper's example);
                               without a common name: ``"Iris tectorum."``
``bioclip_scientific``         ``"a photo of Iris tectorum."``
``bioclip_taxonomic``          ``"a photo of Plantae Tracheophyta Liliopsida Asparagales Iridaceae Iris tectorum."``
                               (BioCLIP's taxonomic string: kingdom..genus, then the species epithet). Only the
                               ranks that are known are printed; with no rank known the variant is not made.
``bioclip_scientific_common``  ``"a photo of Iris tectorum with common name Wall iris."``
``bioclip_taxonomic_common``   ``"a photo of Plantae ... Iris tectorum with common name Wall iris."``
``original``                   the alt text / title / pool caption as published, whitespace-collapsed.
=============================  =====================================================================

``build_caption_variants`` returns only the variants that can honestly be made: the ``*_common`` variants need a
common name, the others a scientific name (or known ranks). ``choose_caption`` then walks a documented fallback
order (``FALLBACKS``) and returns the variant actually used as ``caption_kind``, so the manifest never claims a
template it did not apply. General-domain rows only have ``original``, so every style ends there.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

from pipeline.core.schema import CAPTION_STYLES, TAXONOMY_RANKS

# First available variant wins. Plant styles fall back to less specific plant templates before the original text,
# because a template built from a checked identification is a better caption than an arbitrary title.
FALLBACKS: dict[str, tuple[str, ...]] = {
    "dalip": ("dalip", "bioclip_scientific", "original"),
    "bioclip_scientific": ("bioclip_scientific", "dalip", "original"),
    "bioclip_taxonomic": ("bioclip_taxonomic", "bioclip_scientific", "original"),
    "bioclip_scientific_common": ("bioclip_scientific_common", "bioclip_scientific", "original"),
    "bioclip_taxonomic_common": (
        "bioclip_taxonomic_common",
        "bioclip_taxonomic",
        "bioclip_scientific_common",
        "bioclip_scientific",
        "original",
    ),
    "original": ("original", "dalip", "bioclip_scientific"),
}


class NoCaption(ValueError):
    """No variant of the requested style or its fallbacks exists for this row."""


@functools.lru_cache(maxsize=1 << 16)  # a taxon's ranks repeat its genus's, family's, ... (made once per taxon)
def _clean(text: str | None) -> str:
    return " ".join(text.split()) if text else ""


def taxonomic_string(taxonomy: Mapping[str, str | None] | None, scientific_name: str | None = None) -> str:
    """Kingdom..genus names then the species epithet, skipping unknown ranks ("" when nothing is known)."""
    taxonomy = taxonomy or {}
    names = [_clean(taxonomy.get(rank)) for rank in TAXONOMY_RANKS[:-1]]
    parts = [name for name in names if name]
    species = _clean(taxonomy.get("species")) or (
        _clean(scientific_name) if len(_clean(scientific_name).split()) > 1 else ""
    )
    if species:
        genus = _clean(taxonomy.get("genus"))
        words = species.split()
        # Taxonomy stores the binomial ("Iris tectorum"); print only the epithet when the genus is already there.
        parts.extend(words[1:] if genus and words[0] == genus else words)
    return " ".join(parts)


def build_caption_variants(
    scientific_name: str | None,
    common_name: str | None,
    taxonomy: Mapping[str, str | None] | None,
    original_text: str | None,
) -> dict[str, str]:
    """Every caption variant that can be made from what the source knows about the image."""
    scientific, common, original = _clean(scientific_name), _clean(common_name), _clean(original_text)
    taxonomic = taxonomic_string(taxonomy, scientific)
    variants: dict[str, str] = {}
    if scientific:
        variants["dalip"] = f"{scientific}, commonly known as {common}." if common else f"{scientific}."
        variants["bioclip_scientific"] = f"a photo of {scientific}."
        if common:
            variants["bioclip_scientific_common"] = f"a photo of {scientific} with common name {common}."
    if taxonomic:
        variants["bioclip_taxonomic"] = f"a photo of {taxonomic}."
        if common:
            variants["bioclip_taxonomic_common"] = f"a photo of {taxonomic} with common name {common}."
    if original:
        variants["original"] = original
    return variants


def choose_caption(variants: Mapping[str, str], style: str) -> tuple[str, str]:
    """``(caption, caption_kind)`` for the recipe's style, following ``FALLBACKS``; ``NoCaption`` if none fits."""
    if style not in FALLBACKS:
        raise ValueError(f"unknown caption style {style!r}; expected one of {', '.join(CAPTION_STYLES)}")
    for kind in FALLBACKS[style]:
        if variants.get(kind):
            return variants[kind], kind
    raise NoCaption(f"no caption for style {style!r}: need a scientific name or original text")
