"""General-domain url+caption pools (LAION / DataComp / CC12M style) -> candidate rows, one per pool row.

Formats: Parquet (as LAION and DataComp publish their metadata: https://laion.ai/blog/laion-5b/,
https://github.com/mlfoundations/datacomp), CSV / TSV with a header line or without one (CC12M publishes
``url<TAB>caption`` with no header: ``columns: [url, caption]`` names them), and JSON Lines (one object per line). Text
files may be gzipped. Column names are configuration (``url_col``, ``caption_col``, optional ``id_col``,
``license_col``, ``rights_holder_col``); the caption is kept as ``original_text`` and chosen with
``caption_kind = "original"`` (rows have no taxon, so every caption style falls back to it).

Licenses: pools rarely publish per-image licenses. ``default_license`` (default ``"unspecified"``) fills rows
without one; ``"unspecified"`` is an accepted code meaning "the pool states no per-image license" -- it is recorded,
not invented. Set ``default_license: null`` to reject such rows instead.

Errors: missing configured columns (for JSONL: in the first object) raise ``SourceError`` naming the file, the
expected column and the columns found; an empty file raises ``SourceError``; undecodable bytes raise ``SourceError``
naming the file and line (a bad byte means a wrong encoding or a corrupt file, not one bad row); a ``.json`` /
``.jsonl`` file that starts with ``[`` is one JSON array, not JSON Lines, and raises ``SourceError`` (convert it
with ``jq -c '.[]'``). A JSONL line that is not a JSON object, a later object without a configured column, a CSV
row with the wrong field count, and a value of the wrong type (a list or number as caption: text is never made
with ``str()``; ids may be integers) are rejected rows naming file, row and field. Without ``id_col`` the
``sample_id`` is derived from the URL, so repeated URLs in one pool share a ``sample_id`` (by design: same image).
"""

from __future__ import annotations

import glob
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core.io import is_local, url_to_fs
from pipeline.sources.base import (
    ConfigError,
    CrawlContext,
    SourceError,
    build_row,
    check_url_rewrite,
    config_from_dict,
    reject,
    rewrite_url,
)
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

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> Config:
        return config_from_dict(cls, options, "url_caption_pool options")

    @property
    def used_columns(self) -> list[str]:
        optional = (self.id_col, self.license_col, self.rights_holder_col)
        return [self.url_col, self.caption_col, *(c for c in optional if c)]


def _missing(config: Config, found: list[str], label: str) -> None:
    missing = [c for c in config.used_columns if c not in found]
    if missing:
        raise SourceError(f"{label}: missing configured column(s) {missing}; found columns {found}")


def _parquet(config: Config, path: str) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    try:
        parquet = _parquet_file(path)
    except (OSError, pa.ArrowException) as exc:
        raise SourceError(f"{path}: not a readable Parquet file ({exc})") from None
    with parquet:
        _missing(config, parquet.schema_arrow.names, path)
        if parquet.metadata.num_rows == 0:
            raise SourceError(f"{path}: empty file (0 rows)")
        number = 0
        for batch in parquet.iter_batches(batch_size=8192, columns=config.used_columns):
            for values in batch.to_pylist():
                number += 1
                yield number, values, None


def _parquet_file(path: str) -> pq.ParquetFile:
    if is_local(path):
        return pq.ParquetFile(path)
    fs, remote = url_to_fs(path)
    return pq.ParquetFile(remote, filesystem=fs)


def _delimited(config: Config, path: str) -> Iterator[tuple[int, dict[str, Any], str | None]]:
    delimiter = "\t" if config.format == "tsv" else ","
    records = read_table(path, required=config.used_columns, delimiter=delimiter, quotechar='"', names=config.columns)
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
        raise SourceError(f"{path}: empty file; expected JSON Lines with keys {config.used_columns}")


def _text(value: Any, types: tuple[type, ...]) -> tuple[str | None, str | None]:
    """``(text, None)`` for None or a value of ``types``; ``(None, why)`` otherwise, so junk is never stringified."""
    if value is None or (isinstance(value, types) and not isinstance(value, bool)):
        return (None if value is None else str(value)), None
    expected = " or ".join(t.__name__ for t in types)
    return None, f"expected {expected}, found {type(value).__name__} {repr(value)[:80]}"


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
    """The pool's files: the crawl reads each as its own unit (a DataComp shard list spreads over workers)."""
    return pool_files(config)


def read_part(config: Config, ctx: CrawlContext, path: str) -> Iterator[dict]:
    """The candidate rows of one pool file (``input_row`` counts rows of that file, as in :func:`read`)."""
    reader = {"parquet": _parquet, "csv": _delimited, "tsv": _delimited, "jsonl": _jsonl}[config.format or ""]
    yield from _read_file(config, ctx, path, reader(config, path))


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
