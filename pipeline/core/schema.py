"""The manifest: one pyarrow schema for every row of every source, from crawl to publish.

Stages add or fill columns; no stage deletes a row. A dropped row keeps ``keep = false`` and a
``drop_reason`` (see ``../shared/DESIGN.md`` section 3). This module is the single definition of the
columns; the trainer's loader (``dalip.data``) reads the same names.
"""

from __future__ import annotations

import hashlib

import pyarrow as pa

# Download / crawl outcome of a row. ``pending`` only exists between crawl and download.
STATUS_PENDING = "pending"
STATUS_OK = "ok"
STATUS_REJECTED = "rejected"  # refused at crawl time (bad URL scheme, unknown license, taxon filter, ...)
STATUS_FAILED_DOWNLOAD = "failed_download"
STATUS_FAILED_DECODE = "failed_decode"
STATUS_FAILED_RESIZE = "failed_resize"  # decoded, but refused by the resize rules (too small, aspect ratio)
STATUS_OPTED_OUT = "opted_out"  # X-Robots-Tag noai / noimageai / ... on the image response
STATUS_ROBOTS_DISALLOWED = "robots_disallowed"  # the host's robots.txt disallows our User-Agent
STATUS_BLOCKED = "blocked"  # never requested: not http(s), or its host (or a redirect's) is a non-public address
STATUS_TOO_LARGE = "too_large"  # body over download.max_response_bytes, or image over download.max_image_area
STATUS_QUARANTINED = "quarantined"  # its image killed the download worker twice; not fetched again
STATUSES = (
    STATUS_PENDING,
    STATUS_OK,
    STATUS_REJECTED,
    STATUS_FAILED_DOWNLOAD,
    STATUS_FAILED_DECODE,
    STATUS_FAILED_RESIZE,
    STATUS_OPTED_OUT,
    STATUS_ROBOTS_DISALLOWED,
    STATUS_BLOCKED,
    STATUS_TOO_LARGE,
    STATUS_QUARANTINED,
)

# Caption conventions a recipe can choose (``caption_kind`` names the one a row got); see sources/captions.py.
CAPTION_STYLES = (
    "dalip",
    "bioclip_scientific",
    "bioclip_taxonomic",
    "bioclip_scientific_common",
    "bioclip_taxonomic_common",
    "original",
)

TAXONOMY_RANKS = ("kingdom", "phylum", "class", "order", "family", "genus", "species")
TAXONOMY_TYPE = pa.struct([pa.field(rank, pa.string()) for rank in TAXONOMY_RANKS])

# Columns a source adapter fills (one row per candidate image, no bytes yet).
CANDIDATE_FIELDS = [
    pa.field("sample_id", pa.string(), nullable=False),  # sample_id_for(source, record id or canonical URL)
    pa.field("source", pa.string(), nullable=False),  # registry name, e.g. "inaturalist"
    pa.field("source_record_id", pa.string()),  # e.g. iNaturalist photo id, GBIF occurrence id + media index
    pa.field("domain", pa.string(), nullable=False),  # "plant" or "general"
    pa.field("url", pa.string()),  # image URL, as a URI (an export's IRI percent-encoded, IDN host in ASCII)
    pa.field("url_original", pa.string()),  # the URL as the export wrote it, where that differs from ``url``
    pa.field("page_url", pa.string()),  # page that shows the image
    pa.field("caption", pa.string()),  # the caption chosen by the recipe's caption style
    pa.field("caption_kind", pa.string()),  # dalip | bioclip_* | alt | title | sidecar | ...
    pa.field("caption_variants", pa.map_(pa.string(), pa.string())),  # every caption style we could make
    pa.field("original_text", pa.string()),  # alt text / title / pool caption as published
    # The source's own per-row fields a recipe keeps (a pool's `metadata_columns`: LAION's similarity, NSFW, ...),
    # as a JSON object with their JSON types, keys in the configured order; NULL when nothing is kept.
    # Query with DuckDB: source_metadata->>'$.NSFW', json_extract(source_metadata, '$.similarity')::DOUBLE.
    pa.field("source_metadata", pa.string()),
    pa.field("scientific_name", pa.string()),
    pa.field("common_name", pa.string()),
    pa.field("taxon_rank", pa.string()),
    pa.field("taxonomy", TAXONOMY_TYPE),
    pa.field("license", pa.string()),  # normalised code, e.g. "cc-by-4.0", "cc0-1.0"
    pa.field("license_url", pa.string()),
    pa.field("rights_holder", pa.string()),
    pa.field("attribution", pa.string()),  # ready-to-print credit line
    pa.field("status", pa.string(), nullable=False),  # see STATUSES
    pa.field("error", pa.string()),  # human-readable reason for a non-ok status (file, row, field)
    pa.field("input_file", pa.string()),  # export file the row came from (provenance)
    pa.field("input_row", pa.int64()),  # 1-based data row number in that file
]
CANDIDATE_SCHEMA = pa.schema(CANDIDATE_FIELDS)

# Columns the download stage fills.
DOWNLOAD_FIELDS = [
    pa.field("image_sha256", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("original_width", pa.int32()),
    pa.field("original_height", pa.int32()),
    pa.field("shard", pa.string()),  # tar path relative to the manifest file's directory
    pa.field("key", pa.string()),  # webdataset __key__ inside that shard
]

# Columns the embed stage fills (scores come from the embedding sidecars beside each shard).
SCORE_FIELDS = [
    pa.field("clip_model", pa.string()),  # open_clip model name:weights that produced clip_score
    pa.field("clip_score", pa.float32()),  # cosine(image embedding, caption embedding)
]

# Columns the dedup stages fill: what a row duplicates (a representative's sample_id) or contaminates.
DEDUP_FIELDS = [
    pa.field("exact_dup_of", pa.string()),  # same canonical URL or same image bytes as this (kept) row
    pa.field("text_cluster", pa.string()),  # caption near-duplicate cluster, named by its representative
    pa.field("image_cluster", pa.string()),  # image near-duplicate cluster, named by its representative
    pa.field("contaminates", pa.string()),  # evaluation set whose image this row's image is
    # For a row dropped as a duplicate: the row dedup keeps for its group (pointers followed through rows a later
    # dedup stage dropped in turn), so it never names a row dropped as a duplicate itself.
    pa.field("duplicate_of", pa.string()),
]

# The final decision; the first failing rule wins.
DECISION_FIELDS = [
    pa.field("keep", pa.bool_(), nullable=False),
    pa.field("drop_reason", pa.string()),
]

# Columns the sample stage fills (NULL until it has run): which kept rows the release holds, and where.
SAMPLE_NOT_SAMPLED = "not_sampled"  # eligible, but the domain's target was reached without it
SAMPLE_OVER_SPECIES_CAP = "over_species_cap"  # its species already has the recipe's maximum
SAMPLE_OVER_SOURCE_CAP = "over_source_cap"  # its source already has the recipe's maximum
SAMPLE_LICENSE_EXCLUDED = "license_excluded"  # its license forbids redistribution and the policy excludes it
SAMPLE_REASONS = (SAMPLE_LICENSE_EXCLUDED, SAMPLE_OVER_SPECIES_CAP, SAMPLE_OVER_SOURCE_CAP, SAMPLE_NOT_SAMPLED)
SAMPLE_FIELDS = [
    pa.field("selected", pa.bool_()),  # in the release; false for every other row once sampling ran
    pa.field("sample_reason", pa.string()),  # why a kept row is not selected (SAMPLE_REASONS)
    pa.field("sample_repeat", pa.int32()),  # copies in the release: 1, or more where upsampling was allowed
    pa.field("release_shard", pa.string()),  # release tar relative to the release folder; NULL for URL-only rows
    pa.field("release_key", pa.string()),  # __key__ of its (first) copy in that tar
]

MANIFEST_SCHEMA = pa.schema(
    CANDIDATE_FIELDS + DOWNLOAD_FIELDS + SCORE_FIELDS + DEDUP_FIELDS + DECISION_FIELDS + SAMPLE_FIELDS
)

# The release's own manifest (``release/manifest.parquet``): one row per released copy, in shard and key order.
# ``shard`` and ``key`` say where the bytes are (``shard`` relative to the release folder, as the trainer reads
# it); ``keep`` is true where the bytes are in the shards and false for a URL-only row (license policy).
_RELEASE_FROM_MANIFEST = (
    "sample_id", "domain", "source", "source_record_id", "url", "page_url", "caption", "caption_kind",
    "caption_variants", "original_text", "source_metadata", "scientific_name", "common_name", "taxon_rank",
    "taxonomy", "license", "license_url", "rights_holder", "attribution", "image_sha256", "width", "height",
    "clip_model", "clip_score",
)  # fmt: skip
RELEASE_SCHEMA = pa.schema(
    [
        pa.field("sample_id", pa.string(), nullable=False),
        pa.field("shard", pa.string()),
        pa.field("key", pa.string()),
        pa.field("keep", pa.bool_(), nullable=False),
        pa.field("copy", pa.int32(), nullable=False),  # 0, or 1.. for the extra copies of an upsampled row
        *(MANIFEST_SCHEMA.field(name) for name in _RELEASE_FROM_MANIFEST[1:]),
    ]
)


def sample_id_for(source: str, record_id: str) -> str:
    """Stable id of a sample: 16 bytes of sha256 over (source, record id or canonical URL), as hex."""
    if not source or not record_id:
        raise ValueError(f"sample_id needs a source and a record id, got source={source!r} record_id={record_id!r}")
    return hashlib.sha256(f"{source}\x1f{record_id}".encode()).hexdigest()[:32]
