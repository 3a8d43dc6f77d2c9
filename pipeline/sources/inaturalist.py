"""iNaturalist open data export -> candidate rows, one per row of ``photos.csv``.

Format (https://github.com/inaturalist/inaturalist-open-data, ``Metadata/README.md`` and ``Metadata/structure.sql``;
images in the AWS open data bucket ``s3://inaturalist-open-data/``): four tab-separated files with a header line and
**no quoting** (names may contain ``'`` and ``"``), each optionally gzipped (``photos.csv.gz``):

- ``photos.csv``: photo_uuid, photo_id, observation_uuid, observer_id, extension, license, width, height, position
- ``observations.csv``: observation_uuid, observer_id, latitude, longitude, positional_accuracy, taxon_id,
  quality_grade, observed_on (newer exports add anomaly_score; extra columns are ignored)
- ``taxa.csv``: taxon_id, ancestry (slash-separated ancestor ids, root first), rank_level, rank, name, active
- ``observers.csv``: observer_id, login, name

Image URL: ``{base_url}/photos/{photo_id}/{size}.{extension}``; page: ``https://www.inaturalist.org/photos/{id}``.
The export has no common names: pass ``common_names``, a CSV (comma, header ``taxon_id,common_name``), e.g. derived
from the VernacularNames file of iNaturalist's taxonomy DwC-A. Licenses are the photo's own (``CC-BY-NC``, ...,
unversioned, see ``pipeline.sources.licenses``); an empty license means all rights reserved and the row is rejected.
Attribution follows iNaturalist: ``"(c) <name or login>, some rights reserved (CC BY-NC)"``.

``source_record_id`` is ``"{photo_id}:{observation_uuid}"``: photo_id alone repeats in real exports (one photo
attached to two observations), and a sample_id must not.

Parallel crawl: ``partitions: 16`` crawls the export as 16 units (``<directory>#partition=3/16``), photos and
observations split by an md5 of ``observation_uuid``: each unit reads the files whole but keeps only its share of
both (taxa, observers and common names whole), so workers spread the join and each resumes on its own. The joined
rows are the whole crawl's, sample ids included, ordered by partition, then by row of ``photos.csv``.

Scale: the join, the filters and every column are one DuckDB query (``pipeline.sources.duck_rules`` holds the
shared row rules in SQL). ``photos.csv``, the largest file, is never held: its lines are streamed into the query
as Arrow batches (``pipeline.sources.line_stream``), numbered as a loaded table would be, and the rows come out in
Arrow batches in ``photos.csv`` order (DuckDB's threads hand them back interleaved; ``duck.in_row_order``
restores the order holding only the early ones, and the stream's ``seq`` says which is which). Observations are
held as the join needs them and no more: a 16-byte UUID key and two small codes each, handed to the join once
(``pipeline.sources.inat_observations``); taxa and observers are small tables. DuckDB spills the joins past the
recipe's ``duckdb.memory_limit``, so the full export (hundreds of millions of photos) crawls without cutting it
first. Python runs once per distinct license and per taxon, and per block of lines, never per photo
(``benchmarks/crawl.py``).
An id that repeats in observations, taxa, observers or common_names raises ``SourceError`` naming the file, the
row and the id (a photo would otherwise join to whichever row came last); so does a malformed row there.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import duck
from pipeline.core.config import DuckDBConfig
from pipeline.core.duck import literal
from pipeline.core.io import is_local, isfile, join
from pipeline.core.schema import TAXONOMY_RANKS
from pipeline.sources import duck_rules, duck_text, inat_observations
from pipeline.sources.base import (
    RANK_LEVELS,
    ConfigError,
    CrawlContext,
    SourceError,
    check_count,
    check_taxon_filter,
    check_url_rewrite,
    config_from_dict,
)
from pipeline.sources.chunks import in_partition_sql, partition_parts
from pipeline.sources.textfiles import read_table

SIZES = ("square", "small", "medium", "large", "original")
PHOTO_COLUMNS = ("photo_uuid", "photo_id", "observation_uuid", "observer_id", "extension", "license")
PHOTO_READ = ("photo_id", "observation_uuid", "observer_id", "extension", "license")  # of those, the ones used
TAXA_COLUMNS = ("taxon_id", "ancestry", "rank_level", "rank", "name", "active")
OBSERVER_COLUMNS = ("observer_id", "login", "name")
# photos.license as the export documents it ("": all rights reserved)
LICENSES = ("CC0", "CC-BY", "CC-BY-NC", "CC-BY-SA", "CC-BY-ND", "CC-BY-NC-SA", "CC-BY-NC-ND", "")


@dataclass
class Config:
    directory: str  # folder holding photos/observations/taxa/observers .csv or .csv.gz; local or an fsspec URL
    name: str = "inaturalist"  # registry name written to the `source` column
    common_names: str | None = None  # optional CSV taxon_id,common_name; relative paths are inside `directory`
    base_url: str = "https://inaturalist-open-data.s3.amazonaws.com"  # bucket or mirror serving photos/<id>/<size>
    size: str = "medium"  # square | small | medium | large | original
    quality_grades: tuple[str, ...] = ("research",)  # accepted observations.quality_grade; empty = all
    min_rank: str | None = "species"  # reject identifications coarser than this rank; None = any rank
    kingdoms: tuple[str, ...] = ("Plantae",)  # accepted kingdoms; empty = all
    url_rewrite: dict[str, str] | None = None  # URL prefix -> replacement, for mirrors / offline samples
    partitions: int | None = None  # crawl as this many units (hash partitions of observation_uuid); None = one

    def __post_init__(self) -> None:
        where = f"source {self.name!r} (inaturalist)"
        if self.size not in SIZES:
            raise ConfigError(f"{where}: size {self.size!r} unknown; expected one of {', '.join(SIZES)}")
        if isinstance(self.quality_grades, str):
            raise ConfigError(f"{where}: quality_grades must be a list, e.g. [research]")
        self.quality_grades = tuple(self.quality_grades)
        check_taxon_filter(where, self.kingdoms, self.min_rank)
        self.kingdoms = tuple(self.kingdoms)
        self.url_rewrite = check_url_rewrite(self.url_rewrite, where)
        self.base_url = self.base_url.rstrip("/")
        check_count(where, "partitions", self.partitions, "units")

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> Config:
        return config_from_dict(cls, options, "inaturalist options")


def _inside(directory: str, name: str) -> str:
    """``name`` in the export folder (a local folder as pathlib spells it, or a URL); a full URL is kept."""
    if "://" in name:
        return name
    return str(Path(directory) / name) if is_local(directory) else join(directory.rstrip("/"), name)


def _table(directory: str, stem: str) -> str:
    for candidate in (_inside(directory, f"{stem}.csv"), _inside(directory, f"{stem}.csv.gz")):
        if isfile(candidate):
            return candidate
    raise SourceError(f"{_folder(directory)}: missing {stem}.csv (or {stem}.csv.gz) of the iNaturalist export")


def _folder(directory: str) -> str:
    """The folder as error messages name it (pathlib's spelling for a local one, as before)."""
    return str(Path(directory)) if is_local(directory) else directory


def _lookup(path: str, key: str, columns: tuple[str, ...], delimiter: str = "\t", quote: str | None = None) -> dict:
    """Small table -> {key: values}; a malformed row here would corrupt every photo that joins to it, so it fails.

    So does a repeated key: which of two taxa (or observations) a photo joins to would depend on row order.
    """
    table: dict[str, dict[str, str | None]] = {}
    for record in read_table(path, required=columns, delimiter=delimiter, quotechar=quote):
        where = f"{path} row {record.row} (line {record.line})"
        if record.problem:
            raise SourceError(f"{where}: {record.problem}")
        value = record.values[key] or ""
        if value in table:
            raise SourceError(f"{where}, field {key}: id {value!r} repeats an earlier row; {key} must be unique")
        table[value] = {c: record.values[c] for c in columns}
    return table


def read(config: Config, ctx: CrawlContext) -> Iterator[dict]:
    """One candidate row (a dict) per ``photos.csv`` row, rejected rows included; see :func:`read_batches`."""
    for batch in read_batches(config, ctx):
        for row in batch.to_pylist():
            if row["caption_variants"] is not None:
                row["caption_variants"] = dict(row["caption_variants"])
            yield row


def parts(config: Config) -> list[str]:
    """With ``partitions``, one crawl unit per hash partition of the export; none otherwise (read whole)."""
    return partition_parts(config.directory, config.partitions or 1)


def read_batches(
    config: Config, ctx: CrawlContext, batch_rows: int = 65_536, partition: tuple[int, int] | None = None
) -> Iterator[pa.RecordBatch]:
    """Candidate rows as Arrow batches of ``CANDIDATE_SCHEMA``, in ``photos.csv`` order (every row, with reasons);
    of the photos and observations in hash ``partition`` ``(k, n)`` only, if given."""
    directory = config.directory
    share = in_partition_sql("observation_uuid", *partition) if partition else None
    paths = {stem: _table(directory, stem) for stem in ("photos", "observations", "taxa", "observers")}
    common_path = _inside(directory, config.common_names) if config.common_names else None
    con = duck.connect(ctx.duckdb, *paths.values(), *([common_path] if common_path else []))
    loader = ThreadPoolExecutor(2, thread_name_prefix="inaturalist-read")
    try:
        # photos.csv, the largest file, is streamed into the query, never held; observations.csv is read on a
        # cursor of its own while this connection reads the small tables and makes the captions.
        photos = duck_text.stream_table(
            con, "photos", paths["photos"], required=PHOTO_COLUMNS, columns=PHOTO_READ, where=share
        )
        observations_loaded = loader.submit(_read_observations, con, paths["observations"], share)
        try:
            for stem, key, columns in (
                ("taxa", "taxon_id", TAXA_COLUMNS),
                ("observers", "observer_id", OBSERVER_COLUMNS),
            ):
                duck_text.load_table(con, stem, paths[stem], required=columns, columns=columns)
                duck_text.check_lookup(con, stem, paths[stem], key)
            common = {}
            if common_path:
                common = _lookup(common_path, "taxon_id", ("taxon_id", "common_name"), delimiter=",", quote='"')
        except SourceError:
            observations_loaded.result()  # a broken observations.csv is named first, as the files are listed
            raise
        con.register("common_names", _common_table(common))
        duck_rules.register_udfs(con, ctx.allowed_schemes)
        _create_holders_table(con)
        # The export's documented license codes are normalised up front; any other value, by a UDF on its rows.
        duck_rules.create_license_table(con, "licenses", f"SELECT unnest({duck_rules.list_sql(LICENSES)})")
        duck_rules.register_license_function(con)
        if partition:  # a share of the export names a share of the taxa: caption only those
            observations_loaded.result().register(con)
        per_taxon, taxon_rules = _taxon_columns(con, ctx.caption_style, used_only=partition is not None)
        observations = observations_loaded.result()
        if not partition:
            observations.register(con)
        _create_observation_taxa(con, taxon_rules)
        del taxon_rules  # in observation_taxa now
        # The photos, streamed, are each join's probe side, so rows come out in about their order (DuckDB, not
        # knowing a stream's size, would otherwise hash the photos and probe with the tables, in no order at all).
        con.execute("SET disabled_optimizers = 'join_order,build_side_probe_side'")
        try:
            with photos.errors_raised():
                query = _candidates_sql(config, ctx, paths["photos"], observations.has_text_keys)
                reader = con.sql(query).to_arrow_reader(batch_rows)
                for batch in duck.in_row_order(reader, "seq", batch_rows):
                    yield duck_rules.with_taxon_columns(batch, per_taxon)
        except duckdb.OutOfMemoryException as exc:
            limit = (ctx.duckdb or DuckDBConfig()).memory_limit
            raise SourceError(
                f"{_folder(directory)}: joining the export needs more memory than the recipe's duckdb.memory_limit "
                f"({limit}); raise it (a synthetic export of 1M photos needs 512MB): {str(exc).splitlines()[0]}"
            ) from None
    finally:
        loader.shutdown(cancel_futures=True)
        con.close()


def _read_observations(con: duckdb.DuckDBPyConnection, path: str, share: str | None) -> inat_observations.Observations:
    """observations.csv read on a cursor of its own."""
    cursor = con.cursor()
    try:
        return inat_observations.read_observations(cursor, path, share)
    finally:
        cursor.close()


def _common_table(common: dict[str, dict]) -> pa.Table:
    names = [(row.get("common_name") or None) for row in common.values()]
    return pa.table(
        {"taxon_id": list(common), "common_name": names},
        schema=pa.schema([("taxon_id", pa.string()), ("common_name", pa.string())]),
    )


def _create_holders_table(con) -> None:
    """``holders(observer_id, rights_holder, who)``: each observer's name (else login) and the name its credit
    line gives, made once per observer rather than per photo (``observers`` is dropped)."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE holders AS
        SELECT observer_id, rights_holder, {duck_rules.attribution_who_sql("rights_holder")} AS who
        FROM (SELECT observer_id, CASE WHEN name <> '' THEN name ELSE login END AS rights_holder FROM observers);
        DROP TABLE observers
        """
    )


# Candidate columns that depend on the taxon only: made once per taxon, attached to each photo batch by Arrow
# ``take`` on the taxon's index, so that the query carries and converts narrow photo rows only.
TAXON_LEVEL = ("scientific_name", "common_name", "taxon_rank", "taxonomy", "caption", "caption_kind",
               "caption_variants")  # fmt: skip


def _taxon_columns(con, caption_style: str, used_only: bool) -> tuple[pa.Table, pa.Table]:
    """Every taxon, or (``used_only``) the taxa observations name, with its names, rank, taxonomy and caption, in
    one statement: the ``TAXON_LEVEL`` columns (one row per taxon, not per photo) and, per taxon, what the query's
    rules read of it, with ``tix``, its row in the first table (``used_only`` needs ``observation_taxon_ids``).
    """
    taxa = f"SELECT *, name AS scientific_name, NULL::VARCHAR AS original_text FROM ({_taxon_sql(used_only)})"
    table = con.sql(
        f"""
        SELECT scientific_name, common_name, rank AS taxon_rank, taxonomy, caption, caption_kind, caption_variants,
               taxon_id, {duck_rules.lower_sql("rank")} AS rank_lower, caption_error
        FROM ({duck_rules.caption_select(taxa, caption_style)})
        """
    ).to_arrow_table()
    con.execute("DROP TABLE taxa")
    # The wide columns live on in Arrow only; the query joins the narrow rows. A taxon's index is its row here
    # (no sort of the taxa to number them).
    rules = {
        "tix": pa.array(range(table.num_rows), pa.int32()),
        "taxon_id": table.column("taxon_id"),
        "rank_lower": table.column("rank_lower"),
        "kingdom": pc.struct_field(table.column("taxonomy"), "kingdom"),
        "has_caption": pc.is_valid(table.column("caption")),
        "caption_error": table.column("caption_error"),
    }
    return table.select(list(TAXON_LEVEL)).combine_chunks(), pa.table(rules)


def _create_observation_taxa(con, taxon_rules: pa.Table) -> None:
    """``observation_taxa``: per taxon code of the observations, its taxon id and what the query's rules read of the
    taxon (``taxon_rules``; ``found`` false: the id is not in taxa.csv)."""
    con.register("taxon_rules", taxon_rules)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE observation_taxa AS
        SELECT d.code, d.taxon_id, r.tix, r.rank_lower, r.kingdom, coalesce(r.has_caption, false) AS has_caption,
               r.caption_error, r.tix IS NOT NULL AS found
        FROM observation_taxon_ids d LEFT JOIN taxon_rules r USING (taxon_id);
        DROP TABLE observation_taxon_ids
        """
    )
    con.unregister("taxon_rules")


def _taxon_sql(used_only: bool) -> str:
    """``taxon_id, name, rank, taxonomy, common_name`` per taxon (``used_only``: per taxon observations name).

    The taxonomy of a taxon walks its ``ancestry`` (root first) and itself: each node with a rank of
    ``TAXONOMY_RANKS`` and a name sets that rank, the deepest node last.
    """
    ranks = ", ".join(f"'{rank}'" for rank in TAXONOMY_RANKS)
    used = "SELECT * FROM taxa"
    if used_only:
        used += " SEMI JOIN observation_taxon_ids USING (taxon_id)"
    return f"""
        WITH used AS ({used}), chains AS (
            SELECT taxon_id,
                   list_append(list_filter(string_split(coalesce(ancestry, ''), '/'), lambda x: x <> ''), taxon_id)
                       AS nodes
            FROM used
        ), chain AS (
            SELECT taxon_id, unnest(nodes) AS node, unnest(range(1, len(nodes) + 1)) AS depth FROM chains
        ), named AS (
            SELECT chain.taxon_id, n.rank, arg_max(n.name, chain.depth) AS name
            FROM chain JOIN taxa n ON n.taxon_id = chain.node
            WHERE n.rank IN ({ranks}) AND n.name <> ''
            GROUP BY ALL
        )
        SELECT u.taxon_id, any_value(u.name) AS name, any_value(u.rank) AS rank,
               {duck_rules.taxonomy_struct_sql("named.rank", "named.name")} AS taxonomy,
               any_value(c.common_name) AS common_name
        FROM used u LEFT JOIN named USING (taxon_id) LEFT JOIN common_names c USING (taxon_id)
        GROUP BY u.taxon_id
    """


def _candidates_sql(config: Config, ctx: CrawlContext, photos_path: str, text_keys: bool) -> str:
    """Photos joined to observer, observation, taxon, caption and license; the first failing rule is the error.

    Rules in the order the dict-per-row adapter applied them (first wins): a malformed line, no photo id or
    extension, unknown observer, unknown observation, unknown taxon, kingdom, rank, quality grade, then
    ``build_row``'s URL, license and caption. ``text_keys``: some observations are looked up by their uuid's text
    (``inat_observations``).
    """
    rules = duck_rules

    def error(field: str, message: str) -> str:
        return rules.located_error_sql(photos_path, "data_row", field, message)

    url = rules.rewrite_sql(
        f"{literal(config.base_url + '/photos/')} || photo_id || {literal('/' + config.size + '.')} || extension",
        config.url_rewrite or {},
    )

    def rule(condition: str, field: str, message: str) -> str:
        return f"WHEN {condition} THEN {error(field, message)}"

    plain_hint = "false"  # a URL not rewritten is plain if its prefix is and its photo id and extension are pchars
    if not config.url_rewrite:
        parts = rules.plain_url_parts_sql(
            config.base_url + "/photos/", ["photo_id", literal(f"/{config.size}."), "extension"], ctx.allowed_schemes
        )
        plain_hint = f"(url_raw IS NOT NULL AND {parts})"

    empty = literal("empty; cannot build the image URL")
    rules_sql = [
        rule("problem IS NOT NULL", "(row)", "'line ' || line || ': ' || problem"),
        rule("photo_id = ''", "photo_id", empty),
        rule("extension = ''", "extension", empty),
        rule(
            "observer_found IS NULL",
            "observer_id",
            _message("observer ", rules.repr_sql("observer_id"), " not in observers.csv (no attribution)"),
        ),
        rule(
            "observation_found IS NULL",
            "observation_uuid",
            _message("observation ", rules.repr_sql("observation_uuid"), " not in observations.csv"),
        ),
        rule(
            "taxon_found IS NULL",
            "observations.taxon_id",
            _message("taxon ", rules.repr_sql("taxon_id"), " not in taxa.csv (unidentified observation)"),
        ),
    ]
    if config.kingdoms:
        shown = literal(f" not in [{', '.join(config.kingdoms)}]")
        rules_sql.append(
            rule(
                f"kingdom IS NULL OR NOT list_contains({rules.list_sql(config.kingdoms)}, kingdom)",
                "taxa.ancestry",
                f"'taxon filter: kingdom ' || coalesce(kingdom, '(unknown)') || {shown}",
            )
        )
    if config.min_rank is not None:
        levels = " ".join(f"WHEN {literal(rank)} THEN {level}" for rank, level in RANK_LEVELS.items())
        shown = literal(f" is coarser than min_rank {config.min_rank}")
        rules_sql.append(
            rule(
                f"coalesce((CASE rank_lower {levels} END) > {RANK_LEVELS[config.min_rank]}, true)",
                "taxa.rank",
                f"'taxon filter: rank ' || coalesce(nullif(rank_lower, ''), '(unknown)') || {shown}",
            )
        )
    if config.quality_grades:
        shown = literal(f" not in [{', '.join(config.quality_grades)}]")
        rules_sql.append(
            rule(
                f"NOT list_contains({rules.list_sql(config.quality_grades)}, quality_grade)",
                "observations.quality_grade",
                f"'quality grade ' || coalesce(nullif(quality_grade, ''), '(empty)') || {shown}",
            )
        )
    no_caption = literal(rules.no_caption_error(ctx.caption_style))
    rules_sql += [
        rule("checked.error IS NOT NULL", "url", "checked.error"),
        rule("license_error IS NOT NULL", "license", "license_error"),
        rule("NOT has_caption", "caption", f"coalesce(caption_error, {no_caption})"),
    ]
    # The observation: by its UUID, or (text_keys) by its uuid's text where that is no canonical UUID.
    found, by_text = "o.uuid_key IS NOT NULL", ""

    def code(name: str) -> str:
        return f"coalesce(o.{name}, ot.{name})" if text_keys else f"o.{name}"

    if text_keys:
        found += " OR ot.uuid_text IS NOT NULL"
        by_text = "\n        LEFT JOIN observations_by_text ot ON ot.uuid_text = coalesce(p.observation_uuid, '')"
    record = (
        "CASE WHEN photo_id <> '' THEN photo_id || ':' || observation_uuid ELSE "
        + literal(photos_path + ":")
        + " || data_row END"
    )
    return f"""
    WITH joined AS (
        SELECT p.seq, p.data_row, p.line, p.problem, coalesce(p.photo_id, '') AS photo_id,
               coalesce(p.extension, '') AS extension, coalesce(p.observation_uuid, '') AS observation_uuid,
               p.observer_id, p.license AS raw_license,
               u.observer_id AS observer_found, u.rights_holder, u.who,
               CASE WHEN {found} THEN true END AS observation_found, t.taxon_id, g.quality_grade,
               CASE WHEN t.found THEN true END AS taxon_found, t.tix, t.rank_lower, t.kingdom,
               coalesce(t.has_caption, false) AS has_caption, t.caption_error,
               CASE WHEN l.raw IS NULL THEN py_license(coalesce(p.license, ''))
                    ELSE {{'code': l.code, 'url': l.url, 'prefix': l.prefix, 'suffix': l.suffix, 'error': l.error}}
               END AS license
        FROM (SELECT *, {inat_observations.uuid_key_sql("observation_uuid")} AS uuid_key FROM photos) p
        LEFT JOIN holders u ON u.observer_id = coalesce(p.observer_id, '')
        LEFT JOIN observations o ON o.uuid_key = p.uuid_key{by_text}
        LEFT JOIN observation_taxa t ON t.code = {code("taxon_code")}
        LEFT JOIN observation_grades g ON g.code = {code("grade_code")}
        LEFT JOIN licenses l ON l.raw = coalesce(p.license, '')
    ), licensed AS (
        SELECT * EXCLUDE (license), license.code AS license_code, license.url AS license_url, license.prefix,
               license.suffix, license.error AS license_error
        FROM joined
    ), urls AS (
        SELECT *, CASE WHEN photo_id <> '' AND extension <> '' THEN {url} END AS url_raw FROM licensed
    ), {rules.checked_url_ctes("urls", "url_raw", ctx.allowed_schemes, "checked", plain_hint)}, decided AS (
        SELECT *, CASE {" ".join(rules_sql)} END AS error FROM checked
    )
    SELECT {rules.sample_id_sql(config.name, record)} AS sample_id,
           {literal(config.name)} AS source,
           CASE WHEN photo_id <> '' THEN photo_id || ':' || observation_uuid END AS source_record_id,
           'plant' AS domain,
           CASE WHEN checked.error IS NULL THEN checked.url ELSE url_stripped END AS url,
           CASE WHEN checked.error IS NULL AND checked.url <> url_stripped THEN url_stripped END AS url_original,
           CASE WHEN photo_id <> '' THEN 'https://www.inaturalist.org/photos/' || photo_id END AS page_url,
           tix, NULL::VARCHAR AS original_text, NULL::VARCHAR AS source_metadata,
           CASE WHEN license_error IS NULL THEN license_code ELSE nullif(raw_license, '') END AS license,
           license_url, rights_holder,
           CASE WHEN license_error IS NULL THEN prefix || coalesce(who, {rules.attribution_who_sql("NULL::VARCHAR")})
               || suffix END AS attribution,
           CASE WHEN error IS NULL THEN 'pending' ELSE 'rejected' END AS status, error,
           {literal(photos_path)} AS input_file, data_row AS input_row, seq
    FROM decided
    """


def _message(before: str, value_sql: str, after: str) -> str:
    return f"{literal(before)} || {value_sql} || {literal(after)}"
