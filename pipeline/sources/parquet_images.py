"""Pre-downloaded datasets as Parquet with the image bytes in a column (Hugging Face ``datasets`` exports, BioTrove /
Arboretum-style releases) -> candidate rows, one per Parquet row; the download step copies each row's bytes.

Format: Apache Parquet (https://parquet.apache.org/docs/file-format/); the image column holds either binary (the
encoded JPEG/PNG/WebP file) or Hugging Face's ``Image`` struct ``{bytes: binary, path: string}`` (its ``bytes``
is read). ``path`` is one file, a folder of ``*.parquet`` or a glob, read in sorted order; each file is a crawl
unit. Files must be on a local disk (download them first, e.g. ``huggingface-cli download --repo-type dataset``).

``fields`` maps manifest fields to columns, e.g. ``{source_record_id: uuid, scientific_name: species,
common_name: common_name, original_text: caption, license: license, rights_holder: photographer,
page_url: url}``; only those columns (never the image bytes) are read by the crawl. Without a
``source_record_id`` column the record id is ``<file name>:<row>``, stable only for the same files. A row
without a license gets ``default_license`` (None: rejected). ``exclude`` drops rows by column value (e.g.
``{basisOfRecord: [PreservedSpecimen]}`` keeps herbarium sheets out); they stay as rejected rows with the
column and value. ``taxonomy`` may name a struct column of rank -> name.

``url`` is ``file:///<file>#row=<row in file>&column=<image column>``: the download reads that one value (a row
group's column at a time, cached while a shard's rows follow each other) from the source's own files only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.core.schema import TAXONOMY_RANKS
from pipeline.sources.base import (
    MAPPABLE_FIELDS,
    ConfigError,
    CrawlContext,
    SourceError,
    build_row,
    config_from_dict,
    local_files,
    reject,
)

FIELDS = MAPPABLE_FIELDS
BATCH_ROWS = 8_192


@dataclass
class Config:
    path: str  # a .parquet file, a folder of them or a glob; on a local disk
    name: str = "parquet_images"  # registry name written to the `source` column
    domain: str = "plant"  # "plant" or "general"
    image_column: str = "image"  # binary, or a struct with a `bytes` field (Hugging Face Image)
    fields: dict[str, str] = field(default_factory=dict)  # manifest field -> column
    default_license: str | None = None  # for rows whose license column is empty; None = reject them
    exclude: dict[str, list[str]] = field(default_factory=dict)  # column -> values that drop the row

    def __post_init__(self) -> None:
        where = f"source {self.name!r} (parquet_images)"
        if self.domain not in ("plant", "general"):
            raise ConfigError(f"{where}: domain {self.domain!r} unknown; expected plant or general")
        unknown = sorted(set(self.fields) - set(FIELDS))
        if unknown:
            raise ConfigError(f"{where}: fields {unknown} are not filled from columns; known: {list(FIELDS)}")
        if not isinstance(self.exclude, dict) or not all(isinstance(v, list) for v in self.exclude.values()):
            raise ConfigError(f"{where}: exclude must map a column to a list of values")

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> Config:
        return config_from_dict(cls, options, "parquet_images options")


def files(config: Config) -> list[Path]:
    """The Parquet files ``path`` names, sorted."""
    return local_files(config.path, ".parquet")


def local_roots(config: Config) -> list[str]:
    """The folders the download may read this source's bytes from: those of its files."""
    return sorted({str(p.parent) for p in files(config)})


def parts(config: Config) -> list[str]:
    """One crawl unit per file."""
    return [str(p) for p in files(config)]


def read(config: Config, ctx: CrawlContext) -> Iterator[dict]:
    """One candidate row per row of every file (rejected rows included, with their reason)."""
    for path in parts(config):
        yield from read_part(config, ctx, path)


def read_part(config: Config, ctx: CrawlContext, path: str) -> Iterator[dict]:
    """The candidate rows of one file, metadata columns only (the bytes stay on disk until the download)."""
    try:
        parquet = pq.ParquetFile(path)
    except (OSError, ValueError) as exc:
        raise SourceError(f"{path}: not a readable Parquet file ({exc})") from None
    names = parquet.schema_arrow.names
    wanted = [*dict.fromkeys([*config.fields.values(), *config.exclude])]
    missing = [c for c in [config.image_column, *wanted] if c not in names]
    if missing:
        raise SourceError(f"{path}: missing configured column(s) {missing}; found columns {names}")
    uri = Path(path).as_uri()
    row = 0
    for batch in parquet.iter_batches(batch_size=BATCH_ROWS, columns=wanted or None):
        for values in batch.to_pylist() if wanted else ({} for _ in range(batch.num_rows)):
            yield _candidate(config, ctx, path, uri, row, values)
            row += 1


def _candidate(config: Config, ctx: CrawlContext, path: str, uri: str, row: int, values: dict) -> dict:
    url = f"{uri}#row={row}&column={config.image_column}"
    partial: dict[str, Any] = {"source": config.name, "domain": config.domain, "input_file": path,
                               "input_row": row + 1, "url": url}  # fmt: skip
    problems = []
    for name, column in config.fields.items():
        value = values.get(column)
        if name == "taxonomy":
            if isinstance(value, dict):
                partial["taxonomy"] = {rank: value.get(rank) for rank in TAXONOMY_RANKS}
            elif value is not None:
                problems.append((column, f"expected a struct of rank -> name, found {type(value).__name__}"))
        elif value is not None and not isinstance(value, (str, int)) or isinstance(value, bool):
            problems.append((column, f"expected text for {name}, found {type(value).__name__}"))
        else:
            partial[name] = None if value is None else str(value)
    partial["source_record_id"] = partial.get("source_record_id") or f"{Path(path).name}:{row}"
    partial["license"] = partial.get("license") or config.default_license
    for column, excluded in config.exclude.items():
        value = values.get(column)
        if value is not None and str(value) in excluded:
            problems.append((column, f"{value!r} is excluded by the recipe"))
    for column, message in problems:
        reject(partial, column, message)
    return build_row(partial, ctx, allowed_schemes=(*ctx.allowed_schemes, "file"))
