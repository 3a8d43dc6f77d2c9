"""The rules of :func:`pipeline.sources.base.build_row` as SQL, for adapters that join their export in DuckDB.

Row for row the same values and error texts as ``build_row`` (a test holds the two together on hostile inputs),
without a Python object per row: Python runs once per *distinct* license, and, through UDFs that DuckDB calls
only on the rows that need them, for the rare value SQL cannot treat the same way (a URL that needs
percent-encoding, a ``repr`` with quotes, non-ASCII whitespace). Captions are made in SQL too, once per taxon
(``captions.build_caption_variants`` and ``choose_caption``; tests hold them to the Python on hostile names).
Everything here is an SQL expression or a small temp table; the adapter composes its query from them.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Sequence

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.duck import literal
from pipeline.core.schema import CANDIDATE_SCHEMA, TAXONOMY_RANKS
from pipeline.sources import captions, licenses
from pipeline.sources.base import check_url

_ASCII_PRINTABLE = "'[ -~]*'"
# What Python's str.strip() strips: every character str.isspace() holds for (a test checks them all).
WHITESPACE = (
    "\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009"
    "\u200a\u2028\u2029\u202f\u205f\u3000"
)
_WHITESPACE = literal(WHITESPACE)
_ASCII_CLEAN = "'(?:[!-~]+(?: [!-~]+)*)?'"  # printable ASCII words, one space apart: clean already
_TAXONOMY_SQL = "STRUCT(" + ", ".join(f'"{rank}" VARCHAR' for rank in TAXONOMY_RANKS) + ")"
_REPR_PLAIN = r"'[ -&(-\[\]-~]*'"  # printable ASCII without ' and \: repr() just adds single quotes
_VARCHAR = duckdb.sqltype("VARCHAR")
_URL_CHECK = duckdb.struct_type({"url": _VARCHAR, "error": _VARCHAR})
_PCHAR = "-A-Za-z0-9/:@!$&'()*+,;=._~"  # characters to_uri keeps as they are in a path ('%' is not plain)


def register_udfs(con: duckdb.DuckDBPyConnection, schemes: Sequence[str]) -> None:
    """The Python fallbacks the expressions below call on rare values."""
    schemes = tuple(schemes)

    def url_check(url: str | None) -> dict[str, str | None]:
        uri, error = check_url(url, schemes)
        return {"url": uri, "error": error}

    con.create_function("py_url_check", url_check, [_VARCHAR], _URL_CHECK, null_handling="special")
    con.create_function("py_repr", repr, [_VARCHAR], _VARCHAR, null_handling="special")
    con.create_function("py_strip", _strip, [_VARCHAR], _VARCHAR)
    con.create_function("py_lower", _lower, [_VARCHAR], _VARCHAR)
    con.create_function("py_clean", _clean, [_VARCHAR], _VARCHAR)


def _clean(text: str) -> str:
    return " ".join(text.split())


def _strip(text: str) -> str:
    return text.strip()


def _lower(text: str) -> str:
    return text.lower()


def repr_sql(expr: str) -> str:
    """Python's ``repr(value)`` of a string (``'None'`` for NULL)."""
    return (
        f"CASE WHEN {expr} IS NULL THEN 'None' WHEN regexp_full_match({expr}, {_REPR_PLAIN}) "
        f"THEN '''' || {expr} || '''' ELSE py_repr({expr}) END"
    )


def strip_sql(expr: str) -> str:
    """Python's ``value.strip()``: the value itself where neither end is whitespace (nearly always, and no pattern
    match); else DuckDB's trim where it is printable ASCII (trim strips spaces only), else Python."""
    ends = f"NOT contains({_WHITESPACE}, left({expr}, 1)) AND NOT contains({_WHITESPACE}, right({expr}, 1))"
    stripped = _ascii_or_python(expr, f"trim({expr})", "py_strip")
    return f"CASE WHEN {expr} = '' OR ({ends}) THEN {expr} ELSE {stripped} END"


def clean_sql(expr: str) -> str:
    """``" ".join(value.split())`` (whitespace runs collapsed, ends stripped) of a non-NULL ``expr``."""
    collapsed = _ascii_or_python(expr, f"regexp_replace(trim({expr}), ' +', ' ', 'g')", "py_clean")
    return f"CASE WHEN regexp_full_match({expr}, {_ASCII_CLEAN}) THEN {expr} ELSE {collapsed} END"


def lower_sql(expr: str) -> str:
    """Python's ``value.lower()``: DuckDB's where the value is ASCII (as many bytes as characters), else Python."""
    return f"CASE WHEN strlen({expr}) = length({expr}) THEN lower({expr}) ELSE py_lower({expr}) END"


def _ascii_or_python(expr: str, ascii_sql: str, udf: str) -> str:
    """``ascii_sql`` where ``expr`` is printable ASCII (SQL and Python agree there), else the Python UDF."""
    return f"CASE WHEN regexp_full_match({expr}, {_ASCII_PRINTABLE}) THEN {ascii_sql} ELSE {udf}({expr}) END"


def list_sql(values: Sequence[str]) -> str:
    """A DuckDB list literal of strings."""
    return "[" + ", ".join(literal(v) for v in values) + "]"


def rewrite_sql(url_sql: str, rewrites: dict[str, str]) -> str:
    """:func:`pipeline.sources.base.rewrite_url` in SQL: the longest matching prefix is replaced."""
    expr = url_sql
    for prefix, replacement in sorted(rewrites.items(), key=lambda kv: len(kv[0])):  # the longest ends outermost
        expr = (
            f"CASE WHEN starts_with({url_sql}, {literal(prefix)}) "
            f"THEN {literal(replacement)} || ({url_sql})[{len(prefix) + 1}:] ELSE {expr} END"
        )
    return expr


def plain_url_sql(expr: str, schemes: Sequence[str]) -> str:
    """True where ``expr`` is a plain URL, its own URI as :func:`check_url` gives it: an allowed http(s) scheme in
    lower case, an ASCII lower-case host, no port with a leading zero, path and query of characters
    :func:`to_uri` keeps, no ``%``, fragment or whitespace."""
    pattern = _plain_url_pattern(schemes)
    return f"regexp_full_match({expr}, {literal(pattern)})" if pattern else "false"


def plain_url_parts_sql(prefix: str, parts_sql: Sequence[str], schemes: Sequence[str]) -> str:
    """True only where the URL ``prefix || <parts>`` is plain (:func:`plain_url_sql`), cheaper than matching the
    whole URL: ``prefix`` is matched here, once, and the parts need only be path characters. False is no verdict
    (a part with ``?``, say, may still make a plain URL): match the whole URL then."""
    pattern = _plain_url_pattern(schemes)
    if not pattern or not re.fullmatch(pattern, prefix + "x") or "?" in prefix:
        return "false"
    return f"regexp_full_match({' || '.join(parts_sql)}, {literal(f'[{_PCHAR}]*')})"


def _plain_url_pattern(schemes: Sequence[str]) -> str | None:
    plain = sorted(s for s in schemes if s in ("http", "https"))
    if not plain:
        return None
    return f"(?:{'|'.join(plain)})://[a-z0-9.-]+(?::[1-9][0-9]{{0,3}})?/[{_PCHAR}]*(?:\\?[{_PCHAR}?]*)?"


def url_check_sql(expr: str, schemes: Sequence[str]) -> str:
    """``{url, error}`` as :func:`check_url` gives them for the already stripped URL ``expr``: a plain URL
    (:func:`plain_url_sql`) is its own URI; any other goes to Python."""
    return (
        f"CASE WHEN {plain_url_sql(expr, schemes)} THEN {{'url': {expr}, 'error': NULL::VARCHAR}} "
        f"ELSE py_url_check({expr}) END"
    )


def checked_url_ctes(source: str, raw: str, schemes: Sequence[str], name: str, plain_hint: str = "false") -> str:
    """CTEs ending in ``name``: the rows of ``source`` with ``url_stripped`` (the URL ``raw`` stripped, NULL when
    empty) and ``checked`` (:func:`url_check_sql` of it). A plain raw URL (:func:`plain_url_sql`, matched once into
    ``url_plain``), nearly every one, is its own stripped URL and URI: no second pattern match. ``plain_hint``
    (:func:`plain_url_parts_sql`), where true, says so without matching the whole URL."""
    plain_uri = "{'url': url_stripped, 'error': NULL::VARCHAR}"
    return f"""{name}_plain AS (
        SELECT *, CASE WHEN {plain_hint} THEN true ELSE {plain_url_sql(raw, schemes)} END AS url_plain
        FROM {source}
    ), {name}_stripped AS (
        SELECT *, CASE WHEN url_plain THEN {raw} ELSE nullif({strip_sql(raw)}, '') END AS url_stripped
        FROM {name}_plain
    ), {name} AS (
        SELECT *, CASE WHEN url_plain THEN {plain_uri} ELSE {url_check_sql("url_stripped", schemes)} END AS checked
        FROM {name}_stripped
    )"""


def located_error_sql(input_file: str, row_expr: str, field: str, message_expr: str) -> str:
    """``"<file> row <n>, field <name>: <message>"`` (:func:`pipeline.sources.base.location`)."""
    return f"{literal(f'{input_file} row ')} || {row_expr} || {literal(f', field {field}: ')} || {message_expr}"


def sample_id_sql(source: str, record_expr: str) -> str:
    """:func:`pipeline.core.schema.sample_id_for` in SQL (sha256 over the UTF-8 of source, 0x1F, record id)."""
    return f"left(sha256({literal(source + chr(31))} || {record_expr}), 32)"


_LICENSE_FIELDS = ("code", "url", "prefix", "suffix", "error")
_LICENSE = duckdb.struct_type({name: _VARCHAR for name in _LICENSE_FIELDS})


def create_license_table(con: duckdb.DuckDBPyConnection, table: str, raw_values_sql: str) -> None:
    """``table(raw, code, url, prefix, suffix, error)``: each distinct raw license normalised once.

    ``raw`` is the value with NULL as ''. The attribution of a row is ``prefix || who || suffix``, where ``who``
    is :func:`attribution_who_sql` of its rights holder (cut from :func:`licenses.attribution_line` itself).
    """
    raws = [value for (value,) in con.sql(f"SELECT DISTINCT coalesce(v, '') FROM ({raw_values_sql}) t(v)").fetchall()]
    normalised = _license_structs(raws)
    columns = {"raw": pa.array(raws, pa.string()), **{name: normalised.field(name) for name in _LICENSE_FIELDS}}
    create_from_arrow(con, table, pa.table(columns))


def register_license_function(con: duckdb.DuckDBPyConnection) -> None:
    """SQL function ``py_license(raw)``: the struct ``(code, url, prefix, suffix, error)`` that
    :func:`create_license_table` holds for ``raw`` (NULL as ''), for a query whose licenses are not known before it
    runs (its rows are streamed from a file). Vectorised: Python runs per distinct value of a vector, and a value
    seen before is not normalised again."""

    def py_license(raw: pa.Array | pa.ChunkedArray) -> pa.StructArray:
        values = pc.fill_null(raw, "")
        distinct = pc.unique(values)
        return _license_structs(distinct.to_pylist()).take(pc.index_in(values, value_set=distinct))

    con.create_function("py_license", py_license, [_VARCHAR], _LICENSE, type="arrow", null_handling="special")


def _license_structs(raws: list[str]) -> pa.StructArray:
    rows = [license_values(raw) for raw in raws]
    fields = [pa.array([row[i] for row in rows], pa.string()) for i in range(len(_LICENSE_FIELDS))]
    return pa.StructArray.from_arrays(fields, _LICENSE_FIELDS)


@functools.lru_cache(maxsize=65_536)
def license_values(raw: str) -> tuple[str | None, ...]:
    """``(code, url, prefix, suffix, error)`` of a raw license: the normalised code and URL and the attribution
    line cut around its holder, or the reason it is refused."""
    try:
        lic = licenses.normalize_license(raw)
    except licenses.LicenseError as exc:
        return None, None, None, None, str(exc)
    prefix, suffix = licenses.attribution_line("\x00", lic).split("\x00")
    return lic.code, lic.url, prefix, suffix, None


def attribution_who_sql(holder_expr: str) -> str:
    """The credit line's name: the holder stripped, or "unknown author"."""
    return f"coalesce(nullif({strip_sql(holder_expr)}, ''), 'unknown author')"


# The variants ``captions.build_caption_variants`` makes, in its order (a caption_variants map keeps it).
VARIANT_KINDS = ("dalip", "bioclip_scientific", "bioclip_scientific_common", "bioclip_taxonomic",
                 "bioclip_taxonomic_common", "original")  # fmt: skip
# The columns _variants_sql adds to its input's.
_VARIANT_HELPERS = ("sci", "com", "orig", *(f"r_{rank}" for rank in TAXONOMY_RANKS), "species", "taxonomic",
                    *(f"v_{kind}" for kind in VARIANT_KINDS))  # fmt: skip


def caption_select(inputs_sql: str, caption_style: str) -> str:
    """SQL: the rows of ``inputs_sql`` (with ``scientific_name, common_name, taxonomy, original_text``) and their
    ``caption_variants, caption, caption_kind, caption_error``, as :func:`caption_for` makes them."""
    order = captions.FALLBACKS[_checked_style(caption_style)]
    return f"""
        SELECT * EXCLUDE ({", ".join(_VARIANT_HELPERS)}), {_variant_map_sql(VARIANT_KINDS)} AS caption_variants,
               {_first_sql(order)} AS caption, {_first_kind_sql(order)} AS caption_kind,
               CASE WHEN {_first_sql(order)} IS NULL THEN {literal(no_caption_error(caption_style))} END
                   AS caption_error
        FROM ({_variants_sql(inputs_sql, "original_text")})
    """


def caption_for(
    row: dict, caption_style: str
) -> tuple[list[tuple[str, str]] | None, str | None, str | None, str | None]:
    """``(variants as map items, caption, caption_kind, error)`` as ``build_row`` makes them."""
    variants = captions.build_caption_variants(
        row.get("scientific_name"), row.get("common_name"), row.get("taxonomy"), row.get("original_text")
    )
    try:
        caption, kind = captions.choose_caption(variants, caption_style)
    except captions.NoCaption as exc:
        return list(variants.items()) or None, None, None, str(exc)
    return list(variants.items()) or None, caption, kind, None


def create_fallback_caption_table(
    con: duckdb.DuckDBPyConnection, table: str, inputs_sql: str, caption_style: str
) -> None:
    """Captions for rows that may also have an original text: per distinct ``scientific_name, common_name,
    taxonomy`` of ``inputs_sql``, the taxon's variants (``taxon_variants``) and the style's choices among them
    before and after the ``original`` kind in its fallback order (``before_*``, ``after_*``): see
    :func:`caption_choice_sql`."""
    order = captions.FALLBACKS[_checked_style(caption_style)]
    cut = order.index("original") if "original" in order else len(order)
    before, after = order[:cut], order[cut + 1 :]
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE {table} AS
        SELECT scientific_name, common_name, taxonomy, {_variant_map_sql(VARIANT_KINDS[:-1])} AS taxon_variants,
               {_first_sql(before)} AS before_caption, {_first_kind_sql(before)} AS before_kind,
               {_first_sql(after)} AS after_caption, {_first_kind_sql(after)} AS after_kind
        FROM ({_variants_sql(inputs_sql, "NULL::VARCHAR")})
        """
    )


def _checked_style(caption_style: str) -> str:
    no_caption_error(caption_style)  # an unknown style raises ValueError, as choose_caption does
    return caption_style


def _variants_sql(inputs_sql: str, original_sql: str) -> str:
    """The rows of ``inputs_sql`` with a column ``v_<kind>`` per caption variant (NULL when it cannot be made), as
    :func:`captions.build_caption_variants` makes them; names cleaned as ``captions._clean`` cleans them."""

    def clean(expr: str) -> str:
        return f"coalesce({clean_sql(expr)}, '')"

    ranks = {rank: clean(f'i.taxonomy."{rank}"') for rank in TAXONOMY_RANKS}
    higher = ", ".join(f"r_{rank}" for rank in TAXONOMY_RANKS[:-1])
    return f"""
        SELECT *,
               CASE WHEN sci <> '' THEN sci || CASE WHEN com <> '' THEN ', commonly known as ' || com ELSE '' END
                   || '.' END AS v_dalip,
               CASE WHEN sci <> '' THEN 'a photo of ' || sci || '.' END AS v_bioclip_scientific,
               CASE WHEN sci <> '' AND com <> '' THEN 'a photo of ' || sci || ' with common name ' || com || '.' END
                   AS v_bioclip_scientific_common,
               CASE WHEN taxonomic <> '' THEN 'a photo of ' || taxonomic || '.' END AS v_bioclip_taxonomic,
               CASE WHEN taxonomic <> '' AND com <> '' THEN 'a photo of ' || taxonomic || ' with common name ' || com
                   || '.' END AS v_bioclip_taxonomic_common,
               nullif(orig, '') AS v_original
        FROM (
            SELECT *, array_to_string(list_concat(list_filter([{higher}], lambda x: x <> ''),
                          CASE WHEN species = '' THEN []::VARCHAR[]
                               WHEN r_genus <> '' AND split_part(species, ' ', 1) = r_genus
                               THEN string_split(species, ' ')[2:] ELSE string_split(species, ' ') END), ' ')
                          AS taxonomic  -- kingdom..genus, then the species epithet (the binomial without its genus)
            FROM (
                SELECT *, CASE WHEN r_species <> '' THEN r_species WHEN contains(sci, ' ') THEN sci ELSE '' END
                              AS species
                FROM (
                    SELECT i.*, {clean("i.scientific_name")} AS sci, {clean("i.common_name")} AS com,
                           {clean(original_sql)} AS orig,
                           {", ".join(f"{sql} AS r_{rank}" for rank, sql in ranks.items())}
                    FROM ({inputs_sql}) i
                )
            )
        )
    """


def _variant_map_sql(kinds: Sequence[str]) -> str:
    """The variants that were made, as a map in ``kinds`` order; NULL when none was."""
    entries = ", ".join(f"{{'key': '{kind}', 'value': v_{kind}}}" for kind in kinds)
    made = f"list_filter([{entries}], lambda e: e.value IS NOT NULL)"
    return f"CASE WHEN len({made}) > 0 THEN map_from_entries({made}) END"


def _first_sql(kinds: Sequence[str]) -> str:
    """The first of the variants ``kinds`` that was made (NULL if none was)."""
    return f"coalesce({', '.join('v_' + kind for kind in kinds)})" if kinds else "NULL::VARCHAR"


def _first_kind_sql(kinds: Sequence[str]) -> str:
    """The kind :func:`_first_sql` chose."""
    if not kinds:
        return "NULL::VARCHAR"
    return "CASE " + " ".join(f"WHEN v_{kind} IS NOT NULL THEN '{kind}'" for kind in kinds) + " END"


def caption_choice_sql(alias: str, original_expr: str) -> dict[str, str]:
    """``caption``, ``caption_kind`` and ``caption_variants`` of a row from its fallback-caption row ``alias``
    (NULL when it has no taxon) and its cleaned original text ``original_expr`` ('' when none)."""
    has_original = f"({original_expr} <> '')"
    return {
        "caption": f"CASE WHEN {alias}.before_caption IS NOT NULL THEN {alias}.before_caption WHEN {has_original} "
        f"THEN {original_expr} ELSE {alias}.after_caption END",
        "caption_kind": f"CASE WHEN {alias}.before_caption IS NOT NULL THEN {alias}.before_kind WHEN {has_original} "
        f"THEN 'original' ELSE {alias}.after_kind END",
        "caption_variants": f"CASE WHEN {has_original} THEN map_concat(coalesce({alias}.taxon_variants, "
        f"MAP {{}}::MAP(VARCHAR, VARCHAR)), MAP {{'original': {original_expr}}}) ELSE {alias}.taxon_variants END",
    }


def no_caption_error(caption_style: str) -> str:
    """The caption error of a row that knows nothing to caption with."""
    return caption_for({}, caption_style)[3] or ""


def taxonomy_struct_sql(rank_expr: str, name_expr: str) -> str:
    """An aggregate: the TAXONOMY_TYPE struct of (rank, name) rows, NULL when none."""
    fields = ", ".join(f"'{rank}': max({name_expr}) FILTER (WHERE {rank_expr} = '{rank}')" for rank in TAXONOMY_RANKS)
    return f"CASE WHEN count({rank_expr}) = 0 THEN NULL ELSE {{{fields}}} END"


def with_taxon_columns(batch: pa.RecordBatch, per_taxon: pa.Table) -> pa.RecordBatch:
    """A query's batch as ``CANDIDATE_SCHEMA``, each column of ``per_taxon`` (one row per taxon, in the order of the
    taxon index) taken by the batch's ``tix``: taxon-level values are made once per taxon, so the query carries and
    converts narrow rows only. A row without a taxon (``tix`` NULL) gets NULLs there, as a join would give."""
    index = batch.column("tix")
    taken = {name: per_taxon.column(name).chunk(0).take(index) for name in per_taxon.column_names}
    columns = [taken[name] if name in taken else batch.column(name) for name in CANDIDATE_SCHEMA.names]
    return pa.RecordBatch.from_arrays(columns, schema=CANDIDATE_SCHEMA)


def create_from_arrow(con: duckdb.DuckDBPyConnection, table: str, data: pa.Table) -> None:
    """Temp table ``table`` holding ``data``."""
    con.register("_arrow_input", data)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT * FROM _arrow_input")
    con.unregister("_arrow_input")
