"""Headed, unquoted delimited text exports (iNaturalist's TSVs) as DuckDB tables, read as ``textfiles`` reads them.

:func:`load_table` gives each data row the same ``data_row`` (1-based, header and blank lines not counted),
``line`` (physical line), ``problem`` (``"expected 9 fields, found 7"``) and values (missing trailing fields
NULL, extra fields dropped, the last of two equally named columns) as :func:`pipeline.sources.textfiles.read_table`
yields, so an adapter written over either reports the same rows. DuckDB reads each line whole (one
single-threaded, ordered scan, which numbers the lines) and splits it in SQL; everything after runs in parallel
and spills to disk, so files far larger than memory work. :func:`stream_table` gives the same rows as a view over
the file's lines streamed by Arrow (``pipeline.sources.line_stream``), for a file one query reads once and that
need not be held at all; :func:`fetch_records` gives them unnumbered, as Arrow in a shape of the caller's, read on
all of DuckDB's threads.

A file DuckDB cannot read cleanly (bytes that are not UTF-8, a corrupt ``.gz``) is re-read by the Python reader,
whose :class:`SourceError` names the file, the line and the bytes; the header is checked by Python too (BOM,
declared encoding, missing columns), so every file-level message is the one ``textfiles`` gives.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Sequence
from typing import TypeVar

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.core.duck import literal
from pipeline.sources.base import SourceError
from pipeline.sources.line_stream import LineStream
from pipeline.sources.textfiles import read_header, read_table

T = TypeVar("T")
FETCH_ROWS = 65_536

# Lines are read as one column: this 4-byte separator never occurs in a text export (a line holding it is refused).
_WHOLE_LINE = "\x1f\x1e\x1d\x1c"


def ident(name: str) -> str:
    """A quoted SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def load_table(
    con: duckdb.DuckDBPyConnection,
    table: str,
    path: str,
    *,
    required: Sequence[str],
    columns: Sequence[str],
    delimiter: str = "\t",
    where: str | None = None,
    temporary: bool = True,
) -> None:
    """Temp table ``table(data_row, line, problem, <columns>)`` from a headed text file, one row per record.

    ``columns`` not in the header are NULL (they must then not be ``required``). ``where`` (SQL over the columns)
    keeps only the records it holds for, numbered as in the whole file. Not ``temporary``, the table is seen by
    every cursor of the connection (a temp table only by its own).
    """
    records = _records_sql(table, path, required, columns, delimiter, where)
    create = f"CREATE OR REPLACE {'TEMP ' if temporary else ''}TABLE {ident(table)} AS {records}"
    _checked_read(con, table, path, delimiter, lambda: con.execute(create))


def fetch_records(
    con: duckdb.DuckDBPyConnection,
    path: str,
    select: str,
    *,
    required: Sequence[str],
    columns: Sequence[str],
    delimiter: str = "\t",
    where: str | None = None,
) -> pa.Table:
    """``SELECT {select}`` over :func:`load_table`'s records (``problem, <columns>``; not numbered, in no particular
    order), as Arrow: for a file read once into a shape of the caller's, without a DuckDB table. File-level errors
    as in ``load_table``.

    Records need no number here, so DuckDB reads the file on all its threads (its single-threaded read, which
    numbers lines, also keeps every block it has read until its query ends: the whole file). The header is the one
    line whose text is the header's; a file with a record of that same text is streamed instead, numbered
    (:func:`stream_table`), so that only the true header is left out.
    """
    table = _fetch_unnumbered(con, path, select, required, columns, delimiter, where)
    if table is not None:
        return table
    stream = stream_table(con, "streamed", path, required=required, columns=columns, delimiter=delimiter, where=where)
    with stream.errors_raised():
        return con.sql(f"SELECT {select} FROM streamed").to_arrow_reader(FETCH_ROWS).read_all()


def _fetch_unnumbered(
    con: duckdb.DuckDBPyConnection,
    path: str,
    select: str,
    required: Sequence[str],
    columns: Sequence[str],
    delimiter: str,
    where: str | None,
) -> pa.Table | None:
    """:func:`fetch_records` read on all threads, the header left out as the one line with its text; None when
    more than one line has that text (which of them is the header takes numbering)."""
    header = read_header(path, required=required, delimiter=delimiter)
    first = f"SELECT text FROM ({lines_sql(path, 'fetched_first', parallel=False)}) WHERE text IS NOT NULL LIMIT 1"
    header_line = literal(_checked_read(con, "fetched_first", path, delimiter, con.sql(first).fetchall)[0][0])
    lines = f"SELECT text, text = {header_line} AS is_header FROM ({lines_sql(path, 'fetched', parallel=True)})"
    records = _fields_sql(f"SELECT * FROM ({lines}) WHERE text IS NOT NULL", header, columns, delimiter)
    query = f"SELECT {select}, is_header FROM ({records}) WHERE is_header OR ({where or 'true'})"
    read = con.sql(query).to_arrow_reader
    table = _checked_read(con, "fetched", path, delimiter, lambda: read(FETCH_ROWS).read_all())
    is_header = table.column("is_header")
    if pc.sum(is_header).as_py() != 1:
        return None
    at = pc.index(is_header, True).as_py()  # the header's row, cut out without copying the others
    return pa.concat_tables([table.slice(0, at), table.slice(at + 1)]).drop_columns(["is_header"])


def lines_sql(path: str, table: str, parallel: bool) -> str:
    """The file's physical lines as ``text`` (NULL for a blank one); lines DuckDB cannot read go to
    ``<table>_rejects``."""
    return f"""
        SELECT text FROM read_csv({literal(path)}, columns = {{'text': 'VARCHAR'}}, delim = {literal(_WHOLE_LINE)},
                                  quote = '', escape = '', comment = '', header = false, auto_detect = false,
                                  strict_mode = false, parallel = {str(parallel).lower()}, store_rejects = true,
                                  ignore_errors = true, rejects_table = {literal(table + "_rejects")},
                                  rejects_scan = {literal(table + "_rejects_scan")})
    """


def _records_sql(
    table: str,
    path: str,
    required: Sequence[str],
    columns: Sequence[str],
    delimiter: str,
    where: str | None,
) -> str:
    """The query of :func:`load_table`'s rows; lines DuckDB cannot read go to ``<table>_rejects``."""
    header = read_header(path, required=required, delimiter=delimiter)
    # Two streaming row numbers over one ordered, single-threaded scan: the physical line, then the record
    # (blank lines skipped; the first record is the header).
    lines = f"""
        WITH physical AS (
            SELECT text, row_number() OVER () AS line FROM ({lines_sql(path, table, parallel=False)})
        )
        SELECT * FROM (SELECT row_number() OVER () - 1 AS data_row, line, text FROM physical WHERE text IS NOT NULL)
        WHERE data_row >= 1
    """
    records = _fields_sql(lines, header, columns, delimiter)
    return f"SELECT * FROM ({records}) WHERE {where}" if where else records


def _checked_read(con: duckdb.DuckDBPyConnection, table: str, path: str, delimiter: str, run: Callable[[], T]) -> T:
    """``run()``, a statement over :func:`lines_sql`'s lines of ``table``; a file DuckDB could not read cleanly
    raises the Python reader's error instead (it names the line and the bytes)."""
    try:
        result = run()
    except duckdb.Error as exc:
        _raise_file_error(path, delimiter, str(exc))
    found = con.sql(
        f"SELECT line, error_type, error_message FROM {ident(table + '_rejects')} ORDER BY line LIMIT 1"
    ).fetchall()
    if found:
        line, kind, message = found[0]
        _raise_file_error(path, delimiter, f"line {line}: {kind} ({message})")
    return result


def stream_table(
    con: duckdb.DuckDBPyConnection,
    table: str,
    path: str,
    *,
    required: Sequence[str],
    columns: Sequence[str],
    delimiter: str = "\t",
    where: str | None = None,
) -> LineStream:
    """View ``table(seq, data_row, line, problem, <columns>)``: :func:`load_table`'s rows, streamed from the file
    while a query scans the view (once: the stream is not kept), with ``seq`` 0, 1, 2, ... over the rows ``where``
    keeps. The returned stream's ``error`` is the :class:`SourceError` that ended a failed scan."""
    header = read_header(path, required=required, delimiter=delimiter)
    keep = None
    if where:
        keep = _batch_filter(f"SELECT coalesce({where}, false) FROM "
                             f"({_fields_sql('SELECT * FROM _batch', header, columns, delimiter)})")  # fmt: skip
    stream = LineStream(path, lambda message: _raise_file_error(path, delimiter, message), where=keep)
    con.register(f"{table}_lines", stream.reader())
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW {ident(table)} AS "
        f"{_fields_sql('SELECT * FROM ' + ident(table + '_lines'), header, columns, delimiter)}"
    )
    return stream


def stream_records(
    con: duckdb.DuckDBPyConnection, table: str, path: str, *, delimiter: str, skip_lines: int, where: str | None = None
) -> LineStream:
    """View ``table(seq, data_row, line, f)``: :func:`load_records`' rows, streamed from the file while a query scans
    the view (once), with ``seq`` 0, 1, 2, ... over the rows ``where`` (SQL over ``f``) keeps. A file that is not
    clean UTF-8 fails the scan with the Python reader's :class:`SourceError` (the stream's ``error``)."""
    split = f"SELECT *, string_split(text, {literal(delimiter)}) AS f FROM {{}}"
    keep = _batch_filter(f"SELECT coalesce({where}, false) FROM ({split.format('_batch')})") if where else None
    stream = LineStream(
        path, lambda message: _raise_file_error(path, delimiter, message), where=keep, skip_lines=skip_lines
    )
    con.register(f"{table}_lines", stream.reader())
    lines = ident(table + "_lines")
    con.execute(f"CREATE OR REPLACE TEMP VIEW {ident(table)} AS SELECT * EXCLUDE (text) FROM ({split.format(lines)})")
    return stream


def _batch_filter(mask_sql: str) -> Callable[[pa.RecordBatch], pa.Array]:
    """A stream's ``where``: ``mask_sql`` (one boolean column over the batch as ``_batch``) run on a connection of
    its own, one batch at a time, in order, beside the query that scans the stream."""
    private = duckdb.connect()
    private.execute("SET threads = 1")

    def keep(batch: pa.RecordBatch) -> pa.Array:
        private.register("_batch", batch)
        return private.sql(mask_sql).to_arrow_table().column(0).combine_chunks()

    return keep


def _fields_sql(lines: str, header: Sequence[str], columns: Sequence[str], delimiter: str) -> str:
    """The rows of the query ``lines`` (with a ``text`` column) with ``text`` split into ``columns`` by
    position in ``header``: the other columns first, then ``problem`` and the values."""
    position = {name: i + 1 for i, name in enumerate(header)}  # a repeated name: the last one wins, as in a dict
    values = ", ".join(
        f"f[{position[c]}] AS {ident(c)}" if c in position else f"NULL::VARCHAR AS {ident(c)}" for c in columns
    )
    n = len(header)
    return f"""
        SELECT * EXCLUDE (text, f), CASE WHEN len(f) <> {n} THEN 'expected {n} fields, found ' || len(f) END AS problem,
               {values}
        FROM (SELECT *, string_split(text, {literal(delimiter)}) AS f FROM ({lines}))
    """


def load_records(
    con: duckdb.DuckDBPyConnection,
    table: str,
    path: str,
    *,
    delimiter: str,
    skip_lines: int,
    where: str | None = None,
    temporary: bool = True,
) -> str | None:
    """Temp table ``table(data_row, line, f)`` of an unquoted, headerless-by-name text file (a Darwin Core
    Archive's): ``f`` the fields of each record after the first ``skip_lines`` lines, blank lines skipped, as
    ``textfiles.iter_rows`` numbers them; only the records ``where`` (SQL over ``f``) holds for, if given, numbered
    as in the whole file (not ``temporary``: a table every cursor of the connection sees). Returns DuckDB's
    complaint when it cannot read the file cleanly (bytes that are not UTF-8): the caller then reads it in Python,
    which names the line."""
    try:
        con.execute(
            f"""
            CREATE OR REPLACE {"TEMP " if temporary else ""}TABLE {ident(table)} AS
            SELECT * FROM (
            WITH physical AS (
                SELECT text, row_number() OVER () AS line FROM ({lines_sql(path, table, parallel=False)})
            )
            SELECT row_number() OVER () AS data_row, line, string_split(text, {literal(delimiter)}) AS f
            FROM physical WHERE line > {int(skip_lines)} AND text IS NOT NULL
            ) WHERE {where or "true"}
            """
        )
    except duckdb.Error as exc:
        return str(exc).splitlines()[0]
    found = con.sql(f"SELECT line, error_type FROM {ident(table + '_rejects')} ORDER BY line LIMIT 1").fetchall()
    return f"line {found[0][0]}: {found[0][1]}" if found else None


def _raise_file_error(path: str, delimiter: str, duckdb_message: str) -> None:
    """Raise the Python reader's error for this file (it names line and bytes); DuckDB's if Python reads it."""
    collections.deque(read_table(path, required=(), delimiter=delimiter), maxlen=0)  # read it all: it raises
    raise SourceError(f"{path}: cannot read as delimited text: {duckdb_message.splitlines()[0][:300]}")


def first_bad_row(
    con: duckdb.DuckDBPyConnection, table: str, path: str, key: str | None
) -> tuple[int, int, str | None, str | None] | None:
    """``(data_row, line, problem, repeated key)`` of the first malformed row or repeated ``key``; None if clean."""
    clean = f"SELECT NOT EXISTS (SELECT 1 FROM {ident(table)} WHERE problem IS NOT NULL)"
    if key:  # one hash aggregate; the window that finds the first repeat runs only if there is one
        clean += (
            f" AND NOT EXISTS (SELECT 1 FROM {ident(table)} GROUP BY coalesce({ident(key)}, '') HAVING count(*) > 1)"
        )
    if con.sql(clean).fetchall()[0][0]:
        return None
    repeat = (
        f"SELECT data_row, line, NULL AS problem, coalesce({ident(key)}, '') AS id FROM {ident(table)} "
        f"QUALIFY row_number() OVER (PARTITION BY coalesce({ident(key)}, '') ORDER BY data_row) = 2"
        if key
        else "SELECT NULL::BIGINT, NULL::BIGINT, NULL, NULL WHERE false"
    )
    rows = con.sql(
        f"""SELECT * FROM (SELECT data_row, line, problem, NULL AS id FROM {ident(table)} WHERE problem IS NOT NULL
                           UNION ALL {repeat})
            ORDER BY data_row LIMIT 1"""
    ).fetchall()
    return rows[0] if rows else None


def check_lookup(con: duckdb.DuckDBPyConnection, table: str, path: str, key: str) -> None:
    """A lookup table's rows must be well formed and its key unique, or every row joined to it is wrong."""
    bad = first_bad_row(con, table, path, key)
    if bad is None:
        return
    data_row, line, problem, repeated = bad
    where = f"{path} row {data_row} (line {line})"
    if problem:
        raise SourceError(f"{where}: {problem}")
    raise SourceError(f"{where}, field {key}: id {repeated!r} repeats an earlier row; {key} must be unique")
