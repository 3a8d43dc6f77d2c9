"""iNaturalist ``observations.csv`` as the compact lookup the photo query joins.

The observations are the largest table the photo query holds (the real export has hundreds of millions), so each
is kept as little as exact joins allow: its ``observation_uuid`` as a 16-byte UUID where the text is a canonical
UUID (lowercase hex, 8-4-4-4-12, as the export writes them) and its ``taxon_id`` and ``quality_grade`` as codes
into the lists of the distinct values the export uses. Any other uuid text (an older or a hostile export's) is kept
as text in a second lookup, usually empty, so that a photo joins exactly the observation whose text equals its
own: ``8F14...`` or ``{8f14...}`` never joins ``8f14...``. The lookup is handed to DuckDB as a stream that is
let go as the join's hash table takes it in, so the hash table is the only copy while the photos stream.

The file is read once, on all of DuckDB's threads (:func:`pipeline.sources.duck_text.fetch_records`). A malformed
row or a repeated uuid is found by counts over that read; only then is the file read again, numbered, as a table,
to name the first such row.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.sources import duck_rules, duck_text

REQUIRED = ("observation_uuid", "observer_id", "taxon_id", "quality_grade")
READ = ("observation_uuid", "taxon_id", "quality_grade")
# A photo's or an observation's uuid as a UUID where its text is DuckDB's own spelling of one, else NULL.
KEY = "CASE WHEN TRY_CAST({x} AS UUID)::VARCHAR = {x} THEN TRY_CAST({x} AS UUID) END"


def uuid_key_sql(expr: str) -> str:
    """:data:`KEY` of the text ``expr``."""
    return KEY.format(x=expr)


class Observations:
    """The lookup, until :meth:`register` hands it to a connection (once).

    - ``keyed``: ``uuid_key, taxon_code, grade_code`` per observation (``uuid_key`` NULL where the uuid is not
      canonical: the join's hash table leaves such rows out);
    - ``by_text``: ``uuid_text, taxon_code, grade_code`` of the observations whose uuid is not canonical;
    - ``taxon_ids`` and ``grades``: the values the codes stand for, in code order.
    """

    def __init__(self, keyed: pa.Table, by_text: pa.Table, taxon_ids: pa.Array, grades: pa.Array) -> None:
        self.keyed: pa.Table | None = keyed
        self.by_text, self.taxon_ids, self.grades = by_text, taxon_ids, grades

    def register(self, con: duckdb.DuckDBPyConnection) -> None:
        """Views ``observations`` (scanned once) and, if any, ``observations_by_text``; tables
        ``observation_taxon_ids(code, taxon_id)`` and ``observation_grades(code, quality_grade)``."""
        if self.keyed is None:
            raise RuntimeError("the observations were handed to a connection already")
        con.register("observations", _scanned_once(self.keyed))
        self.keyed = None
        if self.by_text.num_rows:
            duck_rules.create_from_arrow(con, "observations_by_text", self.by_text)
        for table, name, values in (("observation_taxon_ids", "taxon_id", self.taxon_ids),
                                    ("observation_grades", "quality_grade", self.grades)):  # fmt: skip
            codes = pa.array(range(len(values)), pa.int32())
            duck_rules.create_from_arrow(con, table, pa.table({"code": codes, name: values}))

    @property
    def has_text_keys(self) -> bool:
        return self.by_text.num_rows > 0


def read_observations(con: duckdb.DuckDBPyConnection, path: str, share: str | None) -> Observations:
    """``path`` (``observations.csv``) as :class:`Observations`, of the rows in hash partition ``share`` (SQL over
    ``observation_uuid``) if given. A malformed row or a repeated uuid raises ``SourceError`` naming the row."""
    key = uuid_key_sql("observation_uuid")
    read = duck_text.fetch_records(
        con,
        path,
        f"({key})::BLOB AS uuid_key, CASE WHEN {key} IS NULL THEN coalesce(observation_uuid, '') END AS uuid_text, "
        "taxon_id, quality_grade, problem IS NOT NULL AS malformed",
        required=REQUIRED,
        columns=READ,
        where=share,
    )
    read = read.set_column(read.column_names.index("uuid_key"), "uuid_key", _uuids(read.column("uuid_key")))
    _check(con, read, path, share)
    taxa = pc.dictionary_encode(read.column("taxon_id").combine_chunks())
    grades = pc.dictionary_encode(read.column("quality_grade").combine_chunks())
    codes = {"taxon_code": taxa.indices, "grade_code": grades.indices}
    keyed = pa.table({"uuid_key": read.column("uuid_key"), **codes})
    text_keyed = pc.is_valid(read.column("uuid_text"))
    by_text = pa.table({"uuid_text": read.column("uuid_text"), **codes}).filter(text_keyed)
    return Observations(keyed, by_text, taxa.dictionary, grades.dictionary)


def _uuids(blobs: pa.ChunkedArray) -> pa.Array:
    """16-byte blobs as Arrow's uuid type, which DuckDB takes in as UUID (DuckDB gives its UUIDs to Arrow as text
    unless a setting of the whole database says otherwise)."""
    storage = pc.cast(blobs, pa.binary(16)).combine_chunks()
    return pa.ExtensionArray.from_storage(pa.uuid(), storage)


def _check(con: duckdb.DuckDBPyConnection, read: pa.Table, path: str, share: str | None) -> None:
    """Every row well formed and every uuid once; else the file is read again, numbered, to name the first row that
    is not (``SourceError``)."""
    con.register("observations_read", read)
    try:
        faults = con.sql(
            "SELECT count(*) FILTER (malformed) + count(uuid_key) - count(DISTINCT uuid_key) "
            "+ count(uuid_text) - count(DISTINCT uuid_text) FROM observations_read"
        ).fetchall()[0][0]
    finally:
        con.unregister("observations_read")
    if faults:
        duck_text.load_table(con, "observations_checked", path, required=REQUIRED, columns=READ, where=share)
        duck_text.check_lookup(con, "observations_checked", path, "observation_uuid")
        raise RuntimeError(f"{path}: {faults} faults counted, none found by the numbered read")


def _scanned_once(table: pa.Table) -> pa.RecordBatchReader:
    """``table`` as a stream that lets go of each batch once DuckDB has taken it."""
    batches = deque(table.to_batches())

    def handed() -> Iterator[pa.RecordBatch]:
        while batches:
            yield batches.popleft()

    return pa.RecordBatchReader.from_batches(table.schema, handed())
