"""The source registry: adapter name -> module, read from ``sources.yaml`` beside this module, and one way to
run an adapter.

The YAML maps each adapter name to ``module`` (importable path) and its documentation, which every entry must
have: ``description`` (one line), ``format`` (where the published format is specified), ``get`` (where and how
users obtain the data), ``fields`` (manifest column -> the source field(s) it comes from) and ``licenses`` (where
the license comes from, what is rejected); ``plantmix sources [name]`` prints it. A module is an adapter if it has
a ``Config`` dataclass (with ``from_dict``) and ``read(config, ctx)``; one that joins its export in DuckDB also
offers ``read_batches(config, ctx)`` (Arrow batches, no object per row), one whose source comes in many files
``parts(config)`` and ``read_part(config, ctx, part)`` (the crawl then runs one unit per part); one that splits its
export in hash partitions ``parts(config)`` (:func:`pipeline.sources.chunks.partition_parts`) and
``read_batches(config, ctx, batch_rows, partition=(k, n))``. Names resolve through
the table, never through string routing in code, so adding a source is one new module plus one registry entry.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa
import yaml

from pipeline.core.schema import CANDIDATE_SCHEMA
from pipeline.sources.base import ConfigError, CrawlContext, batches_of
from pipeline.sources.chunks import PARTITION_MARK, split_partition

DEFAULT_REGISTRY = Path(__file__).resolve().parent / "sources.yaml"  # package data, installed with the package


DOC_KEYS = ("description", "format", "get", "fields", "licenses")  # the documentation every entry must have
ENTRY_KEYS = ("module", *DOC_KEYS)


@dataclass(frozen=True)
class AdapterInfo:
    name: str  # registry key, used by recipes
    module: str  # importable module implementing Config + read
    description: str  # one line for humans
    format: str  # where the input format is specified (URL or doc path)
    get: str  # where and how users obtain the data (URL + one line)
    fields: dict[str, str]  # manifest (candidate) column -> the source field(s) it comes from
    licenses: str  # where the license comes from and what is rejected


@dataclass(frozen=True)
class ConfigOption:
    """One option a recipe can give an adapter: a field of its ``Config`` dataclass."""

    name: str
    type: str  # the annotation as written, e.g. "tuple[str, ...]"
    default: Any  # the default value (a default_factory called); None where required
    required: bool  # no default: the recipe must give it


def load_registry(path: str | Path | None = None) -> dict[str, AdapterInfo]:
    """Parse the registry YAML; errors name the file and the entry (unknown keys, missing documentation)."""
    path = Path(path) if path else DEFAULT_REGISTRY
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: source registry not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("adapters"), dict):
        raise ConfigError(f"{path}: expected a mapping with an 'adapters' mapping at the top")
    return {name: _entry(path, name, entry) for name, entry in document["adapters"].items()}


def _entry(path: Path, name: str, entry: Any) -> AdapterInfo:
    """One entry, checked: a module, every documentation key and no other, ``fields`` keyed by manifest columns."""
    where = f"{path}: adapters.{name}"
    if not isinstance(entry, dict) or not isinstance(entry.get("module"), str):
        raise ConfigError(f"{where} needs a 'module' string (and {', '.join(DOC_KEYS)})")
    unknown = sorted(set(entry) - set(ENTRY_KEYS))
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {unknown}; expected {list(ENTRY_KEYS)}")
    missing = [key for key in DOC_KEYS if key not in entry]
    if missing:
        raise ConfigError(f"{where} is undocumented: missing key(s) {missing}; every adapter has {list(DOC_KEYS)}")
    for key in ("description", "format", "get", "licenses"):
        if not isinstance(entry[key], str) or not entry[key].strip():
            raise ConfigError(f"{where}.{key}: expected a non-empty string, got {entry[key]!r}")
    fields = entry["fields"]
    if not isinstance(fields, dict) or not fields:
        raise ConfigError(f"{where}.fields: expected a mapping of manifest column -> source field(s), got {fields!r}")
    columns = CANDIDATE_SCHEMA.names
    not_columns = sorted(str(column) for column in fields if column not in columns)
    if not_columns:
        raise ConfigError(f"{where}.fields: {not_columns} not manifest (candidate) column(s); known: {columns}")
    for column, source in fields.items():
        if not isinstance(source, str) or not source.strip():
            raise ConfigError(f"{where}.fields.{column}: expected a non-empty string, got {source!r}")
    return AdapterInfo(
        name, entry["module"], entry["description"], entry["format"], entry["get"], dict(fields), entry["licenses"]
    )


def adapters(path: str | Path | None = None) -> dict[str, str]:
    """``{adapter name: module path}``, as declared in the registry file."""
    return {name: info.module for name, info in load_registry(path).items()}


def load_adapter(name: str, registry_path: str | Path | None = None) -> ModuleType:
    """Import the adapter module registered as ``name``; unknown names list the known ones."""
    table = adapters(registry_path)
    if name not in table:
        raise ConfigError(f"unknown source adapter {name!r}; known adapters: {', '.join(sorted(table))}")
    module = importlib.import_module(table[name])
    if not hasattr(module, "Config") or not callable(getattr(module, "read", None)):
        raise ConfigError(f"adapter {name!r}: module {table[name]} lacks Config and read(config, ctx)")
    return module


def adapter_options(name: str, registry_path: str | Path | None = None) -> list[ConfigOption]:
    """The options a recipe can give adapter ``name``: its ``Config`` dataclass's fields, in order, with defaults."""
    options = []
    for field in dataclasses.fields(load_adapter(name, registry_path).Config):
        if field.default is not dataclasses.MISSING:
            default, required = field.default, False
        elif field.default_factory is not dataclasses.MISSING:
            default, required = field.default_factory(), False
        else:
            default, required = None, True
        annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", str(field.type))
        options.append(ConfigOption(field.name, annotation, default, required))
    return options


def read_source(
    adapter_name: str, options: Mapping[str, Any], ctx: CrawlContext, registry_path: str | Path | None = None
) -> Iterator[dict]:
    """Build the adapter's Config from recipe options and stream its candidate rows."""
    module = load_adapter(adapter_name, registry_path)
    config = module.Config.from_dict(dict(options))
    return module.read(config, ctx)


def source_parts(adapter_name: str, options: Mapping[str, Any], registry_path: str | Path | None = None) -> list[str]:
    """The parts a source can be crawled in, one unit each (an adapter's ``parts(config)``: the files of a pool
    that ships as thousands of part files); empty when the adapter reads its source whole."""
    module = load_adapter(adapter_name, registry_path)
    parts = getattr(module, "parts", None)
    return list(parts(module.Config.from_dict(dict(options)))) if callable(parts) else []


def source_local_roots(
    adapter_name: str, options: Mapping[str, Any], registry_path: str | Path | None = None
) -> list[str]:
    """Folders whose files the download may read for this source (``file://`` URLs of a local or pre-downloaded
    source: an adapter's ``local_roots(config)``); empty for a web source."""
    module = load_adapter(adapter_name, registry_path)
    roots = getattr(module, "local_roots", None)
    return list(roots(module.Config.from_dict(dict(options)))) if callable(roots) else []


def read_source_batches(
    adapter_name: str,
    options: Mapping[str, Any],
    ctx: CrawlContext,
    batch_rows: int = 8_192,
    registry_path: str | Path | None = None,
    part: str | None = None,
) -> Iterator[pa.RecordBatch]:
    """The adapter's candidate rows (of one of its ``parts``, if given) as Arrow batches of ``CANDIDATE_SCHEMA``.

    An adapter that joins its export in DuckDB or Arrow offers ``read_batches(config, ctx)`` and never makes a
    Python object per row; any other is read row by row and batched here (``batch_rows`` dicts at a time).
    """
    module = load_adapter(adapter_name, registry_path)
    config = module.Config.from_dict(dict(options))
    if part is not None and PARTITION_MARK in part:  # a hash partition: read_batches keeps only its share
        yield from module.read_batches(config, ctx, batch_rows, partition=split_partition(part)[1:])
        return
    if part is not None:
        rows = iter(module.read_part(config, ctx, part))
    elif callable(getattr(module, "read_batches", None)):
        yield from module.read_batches(config, ctx, batch_rows)
        return
    else:
        rows = iter(module.read(config, ctx))
    yield from batches_of(rows, batch_rows)
