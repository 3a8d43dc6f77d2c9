"""The media rows of a Darwin Core Archive as one DuckDB query: :mod:`pipeline.sources.gbif_dwca`'s rules in SQL.

For archives whose core and media files are unquoted UTF-8 text (GBIF downloads: tab-separated,
``fieldsEnclosedBy=""``), the adapter's per-row Python (occurrence lookup, taxon, filters, ``build_row``) becomes
a join and column expressions; Python runs once per distinct license and per distinct (name, common name,
taxonomy), never per media row; those taxon-level columns are attached to each batch by Arrow ``take`` on a
taxon index, so the query carries narrow rows. Row for row the same values and error texts as the Python path (a
test holds the two together on hostile archives), which stays for quoted or other-encoded archives,
associatedMedia cores, and any file DuckDB cannot read cleanly (its error names the line).

Memory: the media file, the larger one (a GBIF download of Plantae has tens of millions of media rows), is never
held: its records are streamed into the query (:func:`duck_text.stream_records`), numbered as a loaded table
would be, and are each join's probe side. What the query must know of the media up front (the core ids they name,
their licenses) comes from one read of the file on all threads that keeps only those distinct values. The core is
a table (one row per occurrence); DuckDB spills it past the recipe's ``duckdb.memory_limit``.

Members of a zip or tar are copied to the spill space first (DuckDB reads files, not archive members); an
unpacked archive is read in place.
"""

from __future__ import annotations

import codecs
import functools
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core import duck
from pipeline.core.duck import literal
from pipeline.core.schema import CANDIDATE_SCHEMA, TAXONOMY_RANKS
from pipeline.sources import duck_rules, duck_text
from pipeline.sources.base import RANK_LEVELS, CrawlContext, SourceError
from pipeline.sources.chunks import in_partition_sql
from pipeline.sources.dwca_meta import Archive, FileSpec, no_media_rows, repeated_core_id, short_core_row
from pipeline.sources.line_stream import LineStream

log = logging.getLogger(__name__)


def eligible(core: FileSpec, media: FileSpec) -> bool:
    """Whether both files are unquoted UTF-8 with a one-character delimiter (what the SQL path reads)."""
    return all(
        spec.quotechar is None and len(spec.delimiter) == 1 and codecs.lookup(spec.encoding).name == "utf-8"
        for spec in (core, media)
    )


def read_batches(
    config: Any,
    ctx: CrawlContext,
    archive: Archive,
    core: FileSpec,
    media: FileSpec,
    terms: tuple[dict[str, str], dict[str, tuple[str, ...]]],
    batch_rows: int = 65_536,
    partition: tuple[int, int] | None = None,
) -> Iterator[pa.RecordBatch] | None:
    """Candidate batches in media-file order, or None when DuckDB cannot read a file cleanly (use Python); of the
    occurrences and media rows in hash ``partition`` ``(k, n)`` of the core id only, if given.

    ``config`` is the adapter's :class:`pipeline.sources.gbif_dwca.Config` (not imported: that module imports
    this one), ``terms`` its occurrence and media term tables."""
    occurrence_terms, media_terms = terms
    work = tempfile.mkdtemp(prefix="dwca-", dir=duck.spill_directory(ctx.duckdb, create=True))
    con = duck.connect(ctx.duckdb, *([] if archive.zip or archive.tar else [str(archive.path)]))
    try:
        core_path = _local_copy(archive, core.location, work)
        media_path = _local_copy(archive, media.location, work)
        # The core is streamed into its table while the media file is scanned on a cursor of its own for what the
        # query needs to know of it up front; the media rows are streamed into the query later.
        duck_rules.register_udfs(con, ctx.allowed_schemes)
        with ThreadPoolExecutor(1, thread_name_prefix="dwca-read") as pool:
            media_scanned = pool.submit(_scan_media, con, media_path, media, media_terms, partition)
            complaints = {core.location: _load_core(con, core_path, core, occurrence_terms, partition),
                          media.location: media_scanned.result()}  # fmt: skip
        for location, complaint in complaints.items():
            if complaint:
                log.info("%s: %s; read in Python instead", archive.label(location), complaint)
                con.close()
                shutil.rmtree(work, ignore_errors=True)  # the copies of a packed archive's files go too
                return None
        _check_core(con, archive, core)
        # Occurrences no media row names give no candidate: they go (and are counted) once, here.
        without_media = con.execute(
            "DELETE FROM core WHERE NOT EXISTS (SELECT 1 FROM media_ids m WHERE m.core_id = core.core_id)"
        ).fetchall()[0][0]
        if without_media:
            log.info("%s: %d occurrence(s) have no multimedia row", archive.label(core.location), without_media)
        stream = _create_media(con, media_path, media, media_terms, partition)
        _create_joined(con)
        per_taxon = _create_taxon_columns(con, ctx.caption_style)
        # Every raw license a row can have (its media row's, else its occurrence's), and maybe a few more.
        duck_rules.create_license_table(
            con, "licenses", "SELECT license FROM media_licenses UNION ALL SELECT occurrence_license FROM occurrence"
        )
        # The media rows, streamed, are each join's probe side, so rows come out in about their order.
        con.execute("SET disabled_optimizers = 'join_order,build_side_probe_side'")
        query = _candidates_sql(config, ctx, archive.label(media.location), core.location, media.max_index)
        empty = functools.partial(_raise_if_no_records, con, archive, media, None if partition is None else work)
        return _batches(con, query, batch_rows, work, per_taxon, stream, empty)
    except BaseException:
        con.close()
        shutil.rmtree(work, ignore_errors=True)
        raise


def _batches(
    con: duckdb.DuckDBPyConnection,
    query: str,
    batch_rows: int,
    work: str,
    per_taxon: pa.Table,
    stream: LineStream,
    empty: Callable[[], None],
) -> Iterator[pa.RecordBatch]:
    """The query's rows with the taxon-level columns taken from ``per_taxon``; a row with an original text keeps
    the variants the query made (the taxon's plus ``original``). ``empty()`` runs if no row came."""
    variants = CANDIDATE_SCHEMA.get_field_index("caption_variants")
    rows = 0
    try:
        with stream.errors_raised():
            for batch in duck.in_row_order(con.sql(query).to_arrow_reader(batch_rows), "seq", batch_rows):
                columns = duck_rules.with_taxon_columns(batch, per_taxon).columns
                columns[variants] = pc.if_else(batch.column("has_original"), batch.column("original_variants"),
                                               columns[variants])  # fmt: skip
                rows += batch.num_rows
                yield pa.RecordBatch.from_arrays(columns, schema=CANDIDATE_SCHEMA)
        if not rows:
            empty()
    finally:
        con.close()
        shutil.rmtree(work, ignore_errors=True)


def _load_core(
    con: duckdb.DuckDBPyConnection,
    path: str,
    core: FileSpec,
    terms: dict[str, str],
    partition: tuple[int, int] | None,
) -> str | None:
    """``core``: one row per occurrence (of hash ``partition`` of its id only, if given), numbered, with its number
    of fields and the columns the rules read of it (:func:`_occurrence_sql`), streamed from the file (which is
    never held whole); the reader's complaint if the file is not clean UTF-8 text (the Python path then reads it,
    and names the line)."""
    share = _share_sql(core, partition)
    stream = duck_text.stream_records(
        con, "core_rows", path, delimiter=core.delimiter, skip_lines=core.skip_lines, where=share
    )
    values = ", ".join(f"{_value_sql(core, uri)} AS {duck_text.ident(name)}" for name, uri in terms.items())
    records = f"SELECT data_row, line, len(f) AS fields, f[{core.id_index + 1}] AS core_id, {values} FROM core_rows"
    try:
        with stream.errors_raised():
            con.execute(f"CREATE OR REPLACE TEMP TABLE core AS {_occurrence_sql(records)}")
    except SourceError as exc:
        return str(exc).splitlines()[0]
    finally:
        con.execute("DROP VIEW core_rows")
        con.unregister("core_rows_lines")
    return None


def _local_copy(archive: Archive, member: str, work: str) -> str:
    """A path DuckDB can read: the member itself in an unpacked archive, else a copy in ``work``."""
    if not (archive.zip or archive.tar):
        return archive.member(member)
    target = os.path.join(work, f"{len(os.listdir(work))}.txt")
    with archive.open(member) as source, open(target, "wb") as copy:
        shutil.copyfileobj(source, copy, 1 << 20)
    return target


def _value_sql(spec: FileSpec, uri: str) -> str:
    """:meth:`FileSpec.value` over the split fields ``f``: the field when present and non-empty, else the default."""
    default = literal(spec.defaults[uri]) if uri in spec.defaults else "NULL::VARCHAR"
    index = spec.indexes.get(uri)
    if index is None:
        return default
    return f"CASE WHEN len(f) > {index} AND f[{index + 1}] <> '' THEN f[{index + 1}] ELSE {default} END"


def _or(*exprs: str) -> str:
    """Python's ``a or b or ...`` over text: the first non-empty one, else the last."""
    expr = exprs[-1]
    for item in reversed(exprs[:-1]):
        expr = f"CASE WHEN coalesce({item}, '') <> '' THEN {item} ELSE {expr} END"
    return expr


def _check_core(con: duckdb.DuckDBPyConnection, archive: Archive, core: FileSpec) -> None:
    """Short rows and repeated ids of ``core`` raise as in Python (the first of them in the file)."""
    label = archive.label(core.location)
    short = con.sql(
        f"SELECT data_row, line, fields FROM core WHERE fields <= {core.max_index} ORDER BY data_row LIMIT 1"
    ).fetchall()
    if short:
        number, line, found = short[0]
        raise short_core_row(label, number, line, core, found)
    if con.sql("SELECT count(*) = count(DISTINCT core_id) FROM core").fetchall()[0][0]:
        return
    repeat = con.sql(
        "SELECT core_id, data_row, line FROM core "
        "QUALIFY row_number() OVER (PARTITION BY core_id ORDER BY data_row) = 2 ORDER BY data_row LIMIT 1"
    ).fetchall()
    core_id, number, line = repeat[0]
    raise repeated_core_id(label, number, line, core, core_id)


def _share_sql(spec: FileSpec, partition: tuple[int, int] | None) -> str | None:
    """SQL over the split fields ``f``: the record's id is in hash ``partition`` ``(k, n)``; None for no partition."""
    return in_partition_sql(_field_sql(spec.id_index), *partition) if partition else None


def _field_sql(index: int) -> str:
    """Field ``index`` (0-based) of the split record ``f``, '' when the record is shorter."""
    return f"CASE WHEN len(f) > {index} THEN f[{index + 1}] ELSE '' END"


def _media_values_sql(media: FileSpec, terms: dict[str, tuple[str, ...]]) -> str:
    """The media terms by name over the split fields ``f``."""
    return ", ".join(f"{_term_sql(media, uris)} AS {duck_text.ident(name)}" for name, uris in terms.items())


def _term_sql(media: FileSpec, uris: tuple[str, ...]) -> str:
    """A media term over the split fields ``f``: the first of its URIs that has a value."""
    return f"coalesce({', '.join(_value_sql(media, uri) for uri in uris)})"


def _scan_media(
    con: duckdb.DuckDBPyConnection,
    path: str,
    media: FileSpec,
    terms: dict[str, tuple[str, ...]],
    partition: tuple[int, int] | None,
) -> str | None:
    """Tables ``media_ids`` (the core ids media rows name) and ``media_licenses`` (their licenses) from one read of
    the media file on all threads, unnumbered, on a cursor of its own; DuckDB's complaint if it cannot read the
    file cleanly. The header lines are read too: at most a name or two more in each table, which change no row."""
    share = _share_sql(media, partition) or "true"
    lines = duck_text.lines_sql(path, "media_scan", parallel=True)
    records = f"SELECT string_split(text, {literal(media.delimiter)}) AS f FROM ({lines}) WHERE text IS NOT NULL"
    license = _term_sql(media, terms["license"])
    cursor = con.cursor()
    try:
        cursor.execute(
            f"""
            CREATE OR REPLACE TABLE media_scan AS
            SELECT GROUPING(core_id) AS of_license, core_id, license
            FROM (SELECT {_field_sql(media.id_index)} AS core_id, {license} AS license FROM ({records}) WHERE {share})
            GROUP BY GROUPING SETS ((core_id), (license));
            CREATE OR REPLACE TABLE media_ids AS SELECT core_id FROM media_scan WHERE of_license = 0;
            CREATE OR REPLACE TABLE media_licenses AS SELECT license FROM media_scan WHERE of_license = 1;
            DROP TABLE media_scan
            """
        )
        found = cursor.sql("SELECT line, error_type FROM media_scan_rejects ORDER BY line LIMIT 1").fetchall()
    except duckdb.Error as exc:
        return str(exc).splitlines()[0]
    finally:
        cursor.close()
    return f"line {found[0][0]}: {found[0][1]}" if found else None


def _create_media(
    con: duckdb.DuckDBPyConnection,
    path: str,
    media: FileSpec,
    terms: dict[str, tuple[str, ...]],
    partition: tuple[int, int] | None,
) -> LineStream:
    """View ``media``: one row per media record (of hash ``partition`` of its core id, if given), streamed from the
    file while the query scans it, with ``seq`` its place among them."""
    share = _share_sql(media, partition)
    stream = duck_text.stream_records(
        con, "media_rows", path, delimiter=media.delimiter, skip_lines=media.skip_lines, where=share
    )
    con.execute(
        f"""CREATE OR REPLACE TEMP VIEW media AS
            SELECT seq, data_row, line, len(f) AS fields,
                   {_field_sql(media.id_index)} AS core_id, {_media_values_sql(media, terms)}
            FROM media_rows"""
    )
    return stream


def _raise_if_no_records(
    con: duckdb.DuckDBPyConnection, archive: Archive, media: FileSpec, partition_work: str | None
) -> None:
    """No media row came: raise, unless it was a partition's share and the whole file has records."""
    if partition_work is None or _no_records(con, archive, media, partition_work):
        raise no_media_rows(archive.label(media.location), media)


def _no_records(con: duckdb.DuckDBPyConnection, archive: Archive, spec: FileSpec, work: str) -> bool:
    """Whether the whole file has no data record (asked only when a partition of it came out empty)."""
    path = _local_copy(archive, spec.location, work)
    duck_text.load_records(con, "_all_records", path, delimiter=spec.delimiter, skip_lines=spec.skip_lines)
    return con.sql("SELECT count(*) FROM _all_records").fetchall()[0][0] == 0


def _create_joined(con: duckdb.DuckDBPyConnection) -> None:
    """``occurrence``: each occurrence of ``core`` (those with media, by now), the columns the rules read and
    ``tix``, its index into ``taxa`` (each distinct scientific name, common name and taxonomy once); ``joined``, a
    view: each media row with its occurrence's columns and ``seq``, its place in ``media`` (the query's threads
    hand rows back interleaved; :func:`in_row_order` puts them back in file order without sorting the whole
    result). ``core`` is dropped."""
    q = duck_text.ident
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE taxa AS
        SELECT (row_number() OVER () - 1)::INTEGER AS tix, *
        FROM (SELECT DISTINCT scientific_name, common_name, taxonomy FROM core)
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE occurrence AS
        SELECT o.* EXCLUDE (data_row, line, fields, scientific_name, common_name, taxonomy), t.tix
        FROM core o JOIN taxa t ON {_same_taxon("t", "o")};
        DROP TABLE core
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP VIEW joined AS
        SELECT m.*, o.core_id AS found, o.* EXCLUDE (core_id),
               {_or(q("license"), "occurrence_license")} AS license_raw,
               {_or(q("rightsHolder"), q("creator"), "occurrence_rights_holder")} AS rights_holder,
               {_or(q("access_uri"), q("identifier"))} AS url_raw,
               {_or(q("title"), q("description"))} AS original_raw
        FROM media m LEFT JOIN occurrence o ON o.core_id = m.core_id
        """
    )


def _occurrence_sql(records: str) -> str:
    """Per core row of ``records`` (its terms by name, and ``data_row, line, fields, core_id``): those four and the
    columns the rules read: ``gbifID, occurrence_references, occurrence_license, occurrence_rights_holder, kingdom,
    basisOfRecord, taxon_rank, scientific_name, common_name, taxonomy``."""
    q = duck_text.ident
    species = _or("c.species", "CASE WHEN coalesce(c.genus, '') <> '' AND coalesce(c.specificEpithet, '') <> '' "
                  "THEN c.genus || ' ' || c.specificEpithet ELSE c.species END")  # fmt: skip
    rank_columns = {rank: q(f"rank_{rank}") for rank in TAXONOMY_RANKS[:-1]}
    known = {**rank_columns, "species": "species"}
    taxonomy = "{" + ", ".join(f"'{rank}': nullif({column}, '')" for rank, column in known.items()) + "}"
    nothing_known = " AND ".join(f"coalesce({column}, '') = ''" for column in known.values())
    scientific = _or("CASE WHEN taxon_rank IS NULL OR taxon_rank = 'species' THEN species END", "scientificName",
                     "species")  # fmt: skip
    return f"""
        WITH base AS (
            SELECT c.data_row, c.line, c.fields, c.core_id, c.gbifID, c.{q("references")} AS occurrence_references,
                   c.{q("license")} AS occurrence_license, c.rightsHolder AS occurrence_rights_holder,
                   c.kingdom AS kingdom, c.basisOfRecord, c.scientificName, c.vernacularName, c.taxonRank,
                   {", ".join(f"c.{q(rank)} AS {column}" for rank, column in rank_columns.items())},
                   {species} AS species
            FROM ({records}) c
        ), ranked AS (
            SELECT *, nullif({duck_rules.lower_sql("coalesce(taxonRank, '')")}, '') AS taxon_rank FROM base
        )
        SELECT data_row, line, fields, core_id, gbifID, occurrence_references, occurrence_license,
               occurrence_rights_holder, kingdom, basisOfRecord, taxon_rank, {scientific} AS scientific_name,
               nullif(vernacularName, '') AS common_name,
               CASE WHEN NOT ({nothing_known}) THEN {taxonomy} END AS taxonomy
        FROM ranked
    """


def _same_taxon(a: str, b: str) -> str:
    """SQL: rows ``a`` and ``b`` name the same taxon (scientific name, common name, taxonomy; NULL equals NULL)."""
    return " AND ".join(f"{a}.{c} IS NOT DISTINCT FROM {b}.{c}" for c in ("scientific_name", "common_name", "taxonomy"))


def _create_taxon_columns(con: duckdb.DuckDBPyConnection, caption_style: str) -> pa.Table:
    """``taxon_columns``: each taxon's captions (:func:`duck_rules.create_fallback_caption_table`) by ``tix``;
    returns the candidate columns that depend on the taxon alone, one row per taxon in ``tix`` order."""
    duck_rules.create_fallback_caption_table(
        con, "captions", "SELECT scientific_name, common_name, taxonomy FROM taxa ORDER BY tix", caption_style
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE taxon_columns AS
        SELECT t.*, c.taxon_variants, c.before_caption, c.before_kind, c.after_caption, c.after_kind
        FROM taxa t JOIN captions c ON {_same_taxon("c", "t")}
        """
    )
    return (
        con.sql(
            "SELECT scientific_name, common_name, taxonomy, taxon_variants AS caption_variants FROM taxon_columns "
            "ORDER BY tix"
        )
        .to_arrow_table()
        .combine_chunks()
    )


def _candidates_sql(config: Any, ctx: CrawlContext, label: str, core_location: str, max_index: int) -> str:
    rules = duck_rules

    def rule(condition: str, field: str, message: str) -> str:
        return f"WHEN {condition} THEN {rules.located_error_sql(label, 'data_row', field, message)}"

    url = rules.rewrite_sql("url_raw", config.url_rewrite or {})
    checks = [
        rule("fields <= max_index", "(row)",
             "'line ' || line || ': expected ' || (max_index + 1) || ' fields, found ' || fields"),
        rule("found IS NULL", "coreid",
             f"'occurrence ' || {rules.repr_sql('core_id')} || {literal(' not in ' + core_location)}"),
    ]  # fmt: skip
    if config.kingdoms:
        shown = literal(f" not in [{', '.join(config.kingdoms)}]")
        checks.append(
            rule(f"found IS NOT NULL AND NOT list_contains({rules.list_sql(config.kingdoms)}, "
                 "coalesce(kingdom, chr(0)))",
                 "kingdom", f"'taxon filter: kingdom ' || coalesce(nullif(kingdom, ''), '(unknown)') || {shown}")
        )  # fmt: skip
    if config.min_rank is not None:
        levels = " ".join(f"WHEN {literal(rank)} THEN {level}" for rank, level in RANK_LEVELS.items())
        shown = literal(f" is coarser than min_rank {config.min_rank}")
        checks.append(
            rule(f"found IS NOT NULL AND coalesce((CASE coalesce(taxon_rank, '') {levels} END) > "
                 f"{RANK_LEVELS[config.min_rank]}, true)",
                 "taxonRank", f"'taxon filter: rank ' || coalesce(taxon_rank, '(unknown)') || {shown}")
        )  # fmt: skip
    if config.basis_of_record:
        lowered = rules.list_sql(tuple(b.lower() for b in config.basis_of_record))
        shown = literal(f" not in [{', '.join(config.basis_of_record)}]")
        basis = rules.lower_sql("coalesce(basisOfRecord, '')")
        checks.append(
            rule(f"found IS NOT NULL AND NOT list_contains({lowered}, {basis})", "basisOfRecord",
                 f"'basis of record ' || coalesce(nullif(basisOfRecord, ''), '(empty)') || {shown}")
        )  # fmt: skip
    media_type = rules.strip_sql("coalesce(\"type\", '')")
    still = f"list_contains(['stillimage', 'http://purl.org/dc/dcmitype/stillimage'], {rules.lower_sql(media_type)})"
    checks.append(
        rule(f"NOT {still} AND ({media_type} <> '' OR NOT starts_with(coalesce(\"format\", ''), 'image/'))",
             "type", f"'media type ' || CASE WHEN {media_type} <> '' THEN {media_type} ELSE '(empty, format ' || "
             f"coalesce(\"format\", 'None') || ')' END || ' is not StillImage'")
    )  # fmt: skip
    if config.variants:
        variant = rules.strip_sql("coalesce(\"variant\", '')")
        lowered = rules.list_sql(tuple(v.lower() for v in config.variants))
        shown = literal(f" not in [{', '.join(config.variants)}]")
        checks.append(
            rule(f"{variant} <> '' AND NOT list_contains({lowered}, {rules.lower_sql(variant)})", "variantLiteral",
                 f"'variant ' || {rules.repr_sql(variant)} || {shown}")
        )  # fmt: skip
    no_caption = literal(rules.no_caption_error(ctx.caption_style))
    choice = rules.caption_choice_sql("cap", "original")
    checks += [
        rule("checked.error IS NOT NULL", "url", "checked.error"),
        rule("l.error IS NOT NULL", "license", "l.error"),
        rule(f"({choice['caption']}) IS NULL", "caption", no_caption),
    ]
    record = f"{_or('gbifID', 'core_id')} || ':' || coalesce(url_raw, 'None')"
    return f"""
    WITH rows AS (
        SELECT j.*, {int(max_index)} AS max_index, coalesce({url}, '') AS url_given,
               CASE WHEN original_raw IS NULL THEN '' ELSE {rules.clean_sql("original_raw")} END AS original
        FROM joined j
    ), {rules.checked_url_ctes("rows", "url_given", ctx.allowed_schemes, "urls")}, decided AS (
        SELECT r.*, {choice["caption"]} AS caption, {choice["caption_kind"]} AS caption_kind,
               original <> '' AS has_original,
               CASE WHEN original <> '' THEN {choice["caption_variants"]} END AS original_variants,
               l.code, l.url AS license_url, l.prefix, l.suffix, l.error AS license_error,
               CASE {" ".join(checks)} END AS error
        FROM urls r
        LEFT JOIN taxon_columns cap ON cap.tix = r.tix
        LEFT JOIN licenses l ON l.raw = coalesce(r.license_raw, '')
    )
    SELECT {rules.sample_id_sql(config.name, record)} AS sample_id, {literal(config.name)} AS source,
           {record} AS source_record_id, 'plant' AS domain,
           CASE WHEN checked.error IS NULL THEN checked.url ELSE url_stripped END AS url,
           CASE WHEN checked.error IS NULL AND checked.url <> url_stripped THEN url_stripped END AS url_original,
           CASE WHEN found IS NULL THEN NULL ELSE {
        _or(
            '"references"',
            "occurrence_references",
            "CASE WHEN coalesce(gbifID, '') <> '' THEN 'https://www.gbif.org/occurrence/' || gbifID END",
        )
    } END
               AS page_url,
           caption, caption_kind, tix, has_original, original_variants, original_raw AS original_text,
           NULL::VARCHAR AS source_metadata, CASE WHEN found IS NULL THEN NULL ELSE taxon_rank END AS taxon_rank,
           CASE WHEN license_error IS NULL THEN code ELSE nullif(license_raw, '') END AS license, license_url,
           rights_holder,
           CASE WHEN license_error IS NULL THEN prefix || {rules.attribution_who_sql("rights_holder")} || suffix END
               AS attribution,
           CASE WHEN error IS NULL THEN 'pending' ELSE 'rejected' END AS status, error,
           {literal(label)} AS input_file, data_row AS input_row, seq
    FROM decided
    """
