"""General-domain url+caption pools (LAION / DataComp / CC12M style) -> candidate rows, one per pool row.

Formats: Parquet (as LAION and DataComp publish their metadata: https://laion.ai/blog/laion-5b/,
https://github.com/mlfoundations/datacomp), CSV / TSV with a header line or without one (CC12M publishes
``url<TAB>caption`` with no header: ``columns: [url, caption]`` names them), and JSON Lines (one object per line). Text
files may be gzipped. Column names are configuration (``url_col``, ``caption_col``, optional ``id_col``,
``license_col``, ``rights_holder_col``); the caption is kept as ``original_text`` and chosen with
``caption_kind = "original"`` (rows have no taxon, so every caption style falls back to it).

Source metadata: ``metadata_columns`` names pool columns to carry through to the manifest (LAION's ``similarity``,
``NSFW``, ``punsafe``, ``pwatermark``, ``WIDTH``; DataComp's ``clip_b32_similarity_score``, ``face_bboxes``, ...).
Each row's ``source_metadata`` is then a JSON object of those columns, keys in the configured order, with the
values' JSON types: Parquet values as their Arrow types give them (integers and floats stay numbers, booleans
booleans, lists lists, structs and maps objects, dates and timestamps ISO text), CSV / TSV values as the strings
the file holds, JSON Lines values as they are. NaN and infinities become ``null``, and so does a key a later JSON
Lines object leaves out (the first object must have every configured key). A Parquet column of bytes (binary,
also inside a list or struct) raises ``SourceError``: bytes have no JSON value, so ask for another column. Rejected
rows keep their metadata too, except a row that could not be parsed (bad JSON, wrong CSV field count): NULL, as
without ``metadata_columns``. Query it in DuckDB: ``source_metadata->>'$.NSFW'`` (text),
``json_extract(source_metadata, '$.similarity')::DOUBLE``, ``json_extract(source_metadata, '$.face_bboxes[0]')``.

Parallel crawl: a pool in many files is crawled one file per unit; ``chunk_rows: 1000000`` also cuts any file with
more rows into parts of that many rows (``<file>#rows=1-1000000``, see :mod:`pipeline.sources.chunks`), so one
huge file (CC12M's single TSV) spreads over workers too and a rerun resumes per chunk; the joined rows are the
same as reading the file whole.

Licenses: pools rarely publish per-image licenses. ``default_license`` (default ``"unspecified"``) fills rows
without one; ``"unspecified"`` is an accepted code meaning "the pool states no per-image license" -- it is recorded,
not invented. Set ``default_license: null`` to reject such rows instead.

Errors: missing configured columns, ``metadata_columns`` included (for JSONL: in the first object), raise
``SourceError`` naming the file, the expected column and the columns found; an empty file raises ``SourceError``;
undecodable bytes raise ``SourceError`` naming the file and line (a bad byte means a wrong encoding or a corrupt
file, not one bad row); a ``.json`` / ``.jsonl`` file that starts with ``[`` is one JSON array, not JSON Lines, and
raises ``SourceError`` (convert it with ``jq -c '.[]'``). A JSONL line that is not a JSON object, a later object
without a configured column (other than a metadata one), a CSV row with the wrong field count, and a value of the
wrong type (a list or number as caption: text is never made with ``str()``; ids may be integers) are rejected rows
naming file, row and field. Without ``id_col`` the ``sample_id`` is derived from the URL, so repeated URLs in one
pool share a ``sample_id`` (by design: same image).
"""

from __future__ import annotations

import datetime
import glob
import json
import math
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.io import is_local, parquet_rows, url_to_fs
from pipeline.sources.base import (
    ConfigError,
    CrawlContext,
    SourceError,
    build_row,
    check_count,
    check_url_rewrite,
    config_from_dict,
    reject,
    rewrite_url,
)
from pipeline.sources.chunks import chunk_parts, rows_between, split_part, text_lines
from pipeline.sources.textfiles import DecodedLines, open_binary, read_table

FORMATS = {".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl"}
ID_TYPES = (str, int)  # DataComp's uid is text, LAION's SAMPLE_ID an integer; every other column is text


@dataclass
class Config:
    path: str  # pool file (.parquet, .csv, .tsv, .jsonl; text may end in .gz), a folder of them, or a glob;
    # a local path or an fsspec URL (s3://bucket/pool/, gs://..., hf://datasets/...)
    name: str = "pool"  # registry name written to the `source` column
    format: str | None = None  # parquet | csv | tsv | jsonl; None = from the file extension
    columns: list[str] | None = None  # a headerless csv/tsv's column names in order (CC12M: [url, caption])
    url_col: str = "url"  # image URL column
    caption_col: str = "caption"  # alt text / caption column
    id_col: str | None = None  # stable per-row id (e.g. DataComp "uid"); None = derive sample_id from the URL
    license_col: str | None = None  # per-image license column, if the pool has one
    rights_holder_col: str | None = None  # per-image rights holder column, if any
    default_license: str | None = "unspecified"  # license for rows without one; None = reject those rows
    domain: str = "general"  # "general" for web pools
    url_rewrite: dict[str, str] | None = None  # URL prefix -> replacement, for mirrors / offline samples
    # pool columns kept per row in `source_metadata` (a JSON object, keys in this order), e.g. [similarity, NSFW]
    metadata_columns: list[str] | None = None
    # split each file into parts of this many rows, each crawled as its own unit (one huge file: CC12M's TSV)
    chunk_rows: int | None = None

    def __post_init__(self) -> None:
        where = f"source {self.name!r} (url_caption_pool)"
        if self.format is None:
            suffix = Path(self.path.removesuffix(".gz")).suffix.lower()
            self.format = FORMATS.get(suffix)
            if self.format is None:
                known = sorted(set(FORMATS.values()))
                raise ConfigError(f"{where}: cannot tell the format of {self.path!r}; set format to one of {known}")
        if self.format not in FORMATS.values():
            raise ConfigError(
                f"{where}: format {self.format!r} unknown; expected one of {sorted(set(FORMATS.values()))}"
            )
        if self.columns is not None:
            if self.format not in ("csv", "tsv"):
                raise ConfigError(f"{where}: columns names a headerless csv/tsv's columns; {self.format} has its own")
            if isinstance(self.columns, str) or not self.columns or not all(isinstance(c, str) for c in self.columns):
                raise ConfigError(f"{where}: columns must be a list of column names, e.g. [url, caption]")
            self.columns = list(self.columns)
        self.url_rewrite = check_url_rewrite(self.url_rewrite, where)
        check_count(where, "chunk_rows", self.chunk_rows, "rows")
        if self.metadata_columns is not None:
            names = self.metadata_columns
            if not isinstance(names, (list, tuple)) or not all(isinstance(c, str) and c for c in names):
                raise ConfigError(f"{where}: metadata_columns must be a list of column names, e.g. [similarity, NSFW]")
            repeated = sorted({c for c in names if names.count(c) > 1})
            if repeated:
                raise ConfigError(f"{where}: metadata_columns names {repeated} more than once")
            self.metadata_columns = list(names)

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> Config:
        return config_from_dict(cls, options, "url_caption_pool options")

    @property
    def used_columns(self) -> list[str]:
        optional = (self.id_col, self.license_col, self.rights_holder_col)
        return [self.url_col, self.caption_col, *(c for c in optional if c)]

    @property
    def read_columns(self) -> list[str]:
        """Every column read from a pool file: the used ones, then the metadata ones (each once)."""
        return list(dict.fromkeys([*self.used_columns, *(self.metadata_columns or ())]))


def _missing(config: Config, found: list[str], label: str) -> None:
    missing = [c for c in config.read_columns if c not in found]
    if missing:
        raise SourceError(f"{label}: missing configured column(s) {missing}; found columns {found}")


def _parquet(config: Config, path: str) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    try:
        parquet = _parquet_file(path)
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"{path}: not a readable Parquet file ({exc})") from None
    with parquet:
        _missing(config, parquet.schema_arrow.names, path)
        for name in config.metadata_columns or ():
            kind = parquet.schema_arrow.field(name).type
            if _holds_bytes(kind):
                raise SourceError(
                    f"{path}: metadata column {name!r} holds bytes ({kind}), which have no JSON value; "
                    "leave it out of metadata_columns"
                )
        if parquet.metadata.num_rows == 0:
            raise SourceError(f"{path}: empty file (0 rows)")
        number = 0
        for batch in parquet.iter_batches(batch_size=8192, columns=config.read_columns):
            for values in batch.to_pylist(maps_as_pydicts="lossy"):
                number += 1
                yield number, values, None


def _holds_bytes(kind: pa.DataType) -> bool:
    """Whether an Arrow type is binary or nests a binary (list of binary, struct or map with a binary field)."""
    if pa.types.is_dictionary(kind):
        return _holds_bytes(kind.value_type)
    if isinstance(kind, pa.ExtensionType):
        return _holds_bytes(kind.storage_type)
    binary = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_fixed_size_binary, pa.types.is_binary_view)
    return any(test(kind) for test in binary) or any(_holds_bytes(kind.field(i).type) for i in range(kind.num_fields))


def _parquet_file(path: str) -> pq.ParquetFile:
    if is_local(path):
        return pq.ParquetFile(path)
    fs, remote = url_to_fs(path)
    return pq.ParquetFile(remote, filesystem=fs)


def _delimited(config: Config, path: str) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    delimiter = "\t" if config.format == "tsv" else ","
    records = read_table(path, required=config.read_columns, delimiter=delimiter, quotechar='"', names=config.columns)
    for record in records:
        yield record.row, record.values, (f"line {record.line}: {record.problem}" if record.problem else None)


def _jsonl(config: Config, path: str) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    number = 0
    with open_binary(path) as binary:
        lines = DecodedLines(binary, path, "utf-8")
        for text in lines:
            if not text.strip():
                continue
            number += 1
            if number == 1 and text.lstrip().startswith("["):
                raise SourceError(
                    f"{path} line {lines.line}: the file is a JSON array (it starts with '['), not JSON Lines; "
                    "expected one JSON object per line (convert with: jq -c '.[]')"
                )
            try:
                values = json.loads(text)
            except json.JSONDecodeError as exc:
                yield number, {}, f"line {lines.line}: invalid JSON ({exc.msg} at column {exc.colno})"
                continue
            if not isinstance(values, dict):
                yield number, {}, f"line {lines.line}: expected a JSON object, found {type(values).__name__}"
                continue
            if number == 1:  # the first object tells whether the column names are configured right
                _missing(config, sorted(values), path)
            yield number, values, None
    if number == 0:
        raise SourceError(f"{path}: empty file; expected JSON Lines with keys {config.read_columns}")


def _text(value: Any, types: tuple[type, ...]) -> tuple[str | None, str | None]:
    """``(text, None)`` for None or a value of ``types``; ``(None, why)`` otherwise, so junk is never stringified."""
    if value is None or (isinstance(value, types) and not isinstance(value, bool)):
        return (None if value is None else str(value)), None
    expected = " or ".join(t.__name__ for t in types)
    return None, f"expected {expected}, found {type(value).__name__} {repr(value)[:80]}"


def _metadata(columns: list[str] | None, values: dict[str, Any]) -> str | None:
    """The ``source_metadata`` JSON of one row: ``columns`` in order with their JSON values; None for no columns."""
    if not columns:
        return None
    kept = {column: _json_value(values.get(column)) for column in columns}
    return json.dumps(kept, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _json_value(value: Any) -> Any:
    """A Python value of a Parquet / JSON / CSV cell as JSON: NaN and infinities as null, dates as ISO text."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    if isinstance(value, Decimal):
        return _json_value(float(value))
    if isinstance(value, (datetime.date, datetime.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return str(value)  # no other Arrow type gets here but intervals (bytes are refused with the file's schema)


def pool_files(config: Config) -> list[str]:
    """The file ``path`` names, or every file of the pool's format in a folder / matching a glob, sorted.

    Real pools ship as thousands of part files (DataComp, LAION); the order is stable, so ids and plans are too.
    ``path`` may be an fsspec URL (``s3://bucket/pool/``, ``hf://datasets/...``): the store lists and globs.
    """
    suffixes = {s for s, f in FORMATS.items() if f == config.format}
    files = _local_files(config.path, suffixes) if is_local(config.path) else _remote_files(config.path, suffixes)
    if not files:
        raise SourceError(f"{config.path}: no {config.format} pool files there")
    return files


def _has_suffix(name: str, suffixes: set[str]) -> bool:
    return Path(name.removesuffix(".gz")).suffix in suffixes


def _local_files(path: str, suffixes: set[str]) -> list[str]:
    if Path(path).is_dir():
        return sorted(str(p) for p in Path(path).iterdir() if p.is_file() and _has_suffix(p.name, suffixes))
    if any(c in path for c in "*?["):
        return sorted(glob.glob(path))
    return [path]


def _remote_files(url: str, suffixes: set[str]) -> list[str]:
    """The same choice on an object store (``s3://``, ``gs://``, ``hf://``); file names keep the URL's protocol."""
    fs, path = url_to_fs(url)
    if fs.isdir(path):
        entries = fs.ls(path, detail=True)
        return sorted(
            fs.unstrip_protocol(e["name"])
            for e in entries
            if e["type"] == "file" and _has_suffix(posixpath.basename(e["name"]), suffixes)
        )
    if any(c in path for c in "*?["):
        return sorted(fs.unstrip_protocol(p) for p in fs.glob(path))
    return [url]


def read(config: Config, ctx: CrawlContext) -> Iterator[dict]:
    """Yield one candidate row per pool row of every pool file (rejected rows included, with their reason)."""
    for path in pool_files(config):
        yield from read_part(config, ctx, path)


def parts(config: Config) -> list[str]:
    """The pool's files: the crawl reads each as its own unit (a DataComp shard list spreads over workers); with
    ``chunk_rows``, a file with more rows is cut into parts of that many rows (``<file>#rows=1-1000000``)."""
    files = pool_files(config)
    if not config.chunk_rows:
        return files
    return [part for path in files for part in chunk_parts(path, _row_bound(config, path), config.chunk_rows)]


def _row_bound(config: Config, path: str) -> int:
    """At least the file's data rows: a Parquet file's own count, a text file's lines (less a header line)."""
    if config.format == "parquet":
        return parquet_rows(path)
    header = config.format in ("csv", "tsv") and config.columns is None
    return max(0, text_lines(path) - header)


def read_part(config: Config, ctx: CrawlContext, part: str) -> Iterator[dict]:
    """The candidate rows of one pool file, or of a chunk of one (``input_row`` counts rows of that file, as in
    :func:`read`)."""
    path, first, last = split_part(part)
    reader = {"parquet": _parquet, "csv": _delimited, "tsv": _delimited, "jsonl": _jsonl}[config.format or ""]
    yield from _read_file(config, ctx, path, rows_between(reader(config, path), first, last))


def _read_file(config: Config, ctx: CrawlContext, path: str, rows: Iterator) -> Iterator[dict]:
    for number, values, problem in rows:
        checked = {c: _text(values.get(c), ID_TYPES if c == config.id_col else (str,)) for c in config.used_columns}
        text = {column: value for column, (value, _) in checked.items()}
        url = (text[config.url_col] or "").strip()
        partial: dict[str, Any] = {
            "source": config.name,
            "source_record_id": (text[config.id_col] or None) if config.id_col else None,
            "domain": config.domain,
            "url": rewrite_url(url, config.url_rewrite or {}) if url else None,
            "original_text": text[config.caption_col],
            "source_metadata": None if problem else _metadata(config.metadata_columns, values),
            "license": (text[config.license_col] if config.license_col else None) or config.default_license,
            "rights_holder": text[config.rights_holder_col] if config.rights_holder_col else None,
            "input_file": path,
            "input_row": number,
        }
        missing = [column for column in config.used_columns if column not in values]
        wrong = [(column, why) for column, (_, why) in checked.items() if why]
        if problem:
            reject(partial, "(row)", problem)
        elif missing:
            reject(partial, ", ".join(missing), "missing from this row (a configured column)")
        elif wrong:
            reject(partial, *wrong[0])
        yield build_row(partial, ctx)
