"""The attribution file: who to credit for each released image whose license asks for credit.

Every CC BY-style license (``cc-by``, ``cc-by-4.0``, ``cc-by-nc-sa-3.0``, ...) requires naming the author, the
license and the source wherever the image is redistributed, so the release carries:

- ``ATTRIBUTION.csv``: one ready credit line per released row under such a license (upsampled copies included,
  so any key of any shard can be looked up), with its source page; DuckDB writes it straight from the release
  manifest, in shard and key order.
- ``ATTRIBUTION.md``: per license the number of images and rights holders and the top rights holders, plus the
  public-domain rows (no credit needed) and the rows whose pool states no license. Top-N tables only, so its
  size does not grow with the release.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from pipeline.core.duck import literal
from pipeline.stages.publish.card import markdown_table

CREDIT_REQUIRED = "lower(license) LIKE 'cc-by%'"  # every CC BY variant, versioned or not
PUBLIC_DOMAIN = "(lower(license) LIKE 'cc0%' OR lower(license) LIKE 'pdm%')"
UNSPECIFIED = "lower(license) = 'unspecified'"  # general pools without per-image licenses (sources/licenses.py)
CSV_COLUMNS = ("sample_id", "shard", "key", "license", "license_url", "rights_holder", "attribution", "page_url", "url")
TOP_PER_LICENSE = 5
TOP_OVERALL = 25
_HOLDER = "coalesce(nullif(trim(rights_holder), ''), '(unknown)')"
# The credit line the crawl recorded, else one in the same style (sources/licenses.py ``attribution_line``):
# "(c) Jane Doe, some rights reserved (CC BY-NC 4.0)".
_CREDIT_LINE = (
    "coalesce(nullif(trim(attribution), ''), '(c) ' || coalesce(nullif(trim(rights_holder), ''), 'unknown author') "
    "|| ', some rights reserved (CC ' || upper(regexp_replace(substr(license, 4), '-(\\d\\.\\d)$', ' \\1')) || ')')"
)


def write_attribution(con: duckdb.DuckDBPyConnection, release_manifest: str, out: Path) -> dict:
    """Write out/ATTRIBUTION.csv (one row per released row whose license requires attribution) and
    out/ATTRIBUTION.md; return counts (rows and images to credit, rights holders, public domain, unspecified)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    released = f"read_parquet({literal(release_manifest)})"
    _write_csv(con, released, out / "ATTRIBUTION.csv")
    counts = _counts(con, released)
    sections = [
        _intro(counts),
        _credit_section(con, released),
        _top_holders_section(con, released),
        _public_domain_section(con, released),
        _unspecified_section(con, released),
        _other_section(con, released),
    ]
    (out / "ATTRIBUTION.md").write_text("\n\n".join(s for s in sections if s) + "\n", encoding="utf-8", newline="\n")
    return counts


def _write_csv(con: duckdb.DuckDBPyConnection, released: str, path: Path) -> None:
    """One DuckDB ``COPY``: the rows never pass through Python; a total order makes reruns byte-identical."""
    columns = ", ".join(_CREDIT_LINE + " AS attribution" if c == "attribution" else c for c in CSV_COLUMNS)
    con.execute(
        f"COPY (SELECT {columns} FROM {released} WHERE {CREDIT_REQUIRED} "
        f"ORDER BY shard NULLS LAST, key NULLS LAST, sample_id, copy) TO {literal(str(path))} (FORMAT csv, HEADER)"
    )


def _counts(con: duckdb.DuckDBPyConnection, released: str) -> dict:
    row = con.sql(
        f"""SELECT count(*) FILTER (WHERE {CREDIT_REQUIRED}),
                   count(DISTINCT sample_id) FILTER (WHERE {CREDIT_REQUIRED}),
                   count(DISTINCT {_HOLDER}) FILTER (WHERE {CREDIT_REQUIRED}),
                   count(DISTINCT sample_id) FILTER (WHERE {PUBLIC_DOMAIN}),
                   count(DISTINCT sample_id) FILTER (WHERE {UNSPECIFIED}),
                   count(DISTINCT sample_id) FILTER (WHERE license IS NULL OR NOT ({CREDIT_REQUIRED} OR {PUBLIC_DOMAIN}
                                                                                  OR {UNSPECIFIED}))
            FROM {released}"""
    ).fetchall()[0]
    names = ("credit_rows", "credit_images", "rights_holders", "public_domain_images", "unspecified_images",
             "other_images")  # fmt: skip
    return dict(zip(names, (int(v) for v in row), strict=True))


def _intro(counts: dict) -> str:
    return "\n\n".join([
        "# Attribution",
        "Every image keeps its own license. CC BY-style licenses require credit: name the author, the license and "
        "the source. `ATTRIBUTION.csv` has the ready credit line and the source page for each of the "
        f"{counts['credit_rows']:,} released rows ({counts['credit_images']:,} images, upsampled copies listed "
        f"under each of their keys) from {counts['rights_holders']:,} rights holders; columns: "
        + ", ".join(f"`{c}`" for c in CSV_COLUMNS) + ". Look an image up by `shard` and `key`.",
    ])  # fmt: skip


def _credit_section(con: duckdb.DuckDBPyConnection, released: str) -> str:
    sql = f"""
        WITH h AS (SELECT license, {_HOLDER} AS holder, count(DISTINCT sample_id) AS n
                   FROM {released} WHERE {CREDIT_REQUIRED} GROUP BY ALL),
        top AS (SELECT license, string_agg(holder || ' (' || n || ')', ', ' ORDER BY n DESC, holder) AS names
                FROM (SELECT *, row_number() OVER (PARTITION BY license ORDER BY n DESC, holder) AS rank FROM h)
                WHERE rank <= {TOP_PER_LICENSE} GROUP BY license),
        totals AS (SELECT license, count(DISTINCT sample_id) AS images, count(DISTINCT {_HOLDER}) AS holders
                   FROM {released} WHERE {CREDIT_REQUIRED} GROUP BY license)
        SELECT license, images, holders, names FROM totals JOIN top USING (license) ORDER BY images DESC, license"""
    rows = [list(r) for r in con.sql(sql).fetchall()]
    headers = ["license", "images", "rights holders", f"top {TOP_PER_LICENSE} rights holders (images)"]
    return "## Licenses that require credit\n\n" + (markdown_table(headers, rows) if rows else "None.")


def _top_holders_section(con: duckdb.DuckDBPyConnection, released: str) -> str:
    sql = f"""SELECT {_HOLDER} AS holder, count(DISTINCT sample_id) AS n,
                     string_agg(DISTINCT license, ', ' ORDER BY license)
              FROM {released} WHERE {CREDIT_REQUIRED} GROUP BY holder ORDER BY n DESC, holder LIMIT {TOP_OVERALL}"""
    rows = [list(r) for r in con.sql(sql).fetchall()]
    if not rows:
        return ""
    title = f"## The {TOP_OVERALL} most credited rights holders\n\nThe full list, per image, is `ATTRIBUTION.csv`."
    return title + "\n\n" + markdown_table(["rights holder", "images", "licenses"], rows)


def _public_domain_section(con: duckdb.DuckDBPyConnection, released: str) -> str:
    rows = _images_by(con, released, "license", PUBLIC_DOMAIN)
    body = markdown_table(["license", "images"], rows) if rows else "None."
    return "## Public domain (no credit required)\n\nCC0 and Public Domain Mark images; not in the CSV.\n\n" + body


def _unspecified_section(con: duckdb.DuckDBPyConnection, released: str) -> str:
    rows = _images_by(con, released, "source", UNSPECIFIED)
    if not rows:
        return ""
    return "\n\n".join([
        "## No license stated (`unspecified`)",
        "These images come from general-domain url+caption pools that publish no per-image license: the pool states "
        "no license, which does not make them free to use. Check each image's terms at its page before reuse; list "
        "them with `SELECT sample_id, url, page_url FROM 'manifest.parquet' WHERE license = 'unspecified'`.",
        markdown_table(["source", "images"], rows),
    ])  # fmt: skip


def _other_section(con: duckdb.DuckDBPyConnection, released: str) -> str:
    """Licenses outside the known families: shown, never silently left out (there should be none)."""
    other = f"license IS NULL OR NOT ({CREDIT_REQUIRED} OR {PUBLIC_DOMAIN} OR {UNSPECIFIED})"
    rows = _images_by(con, released, "coalesce(license, '(none)')", other)
    if not rows:
        return ""
    return "## Other licenses\n\nNot recognised as CC BY, public domain or unspecified; check them by hand.\n\n" + (
        markdown_table(["license", "images"], rows)
    )


def _images_by(con: duckdb.DuckDBPyConnection, released: str, column: str, where: str) -> list[list]:
    sql = f"""SELECT {column} AS k, count(DISTINCT sample_id) AS n FROM {released} WHERE {where}
              GROUP BY k ORDER BY n DESC, k"""
    return [list(r) for r in con.sql(sql).fetchall()]
