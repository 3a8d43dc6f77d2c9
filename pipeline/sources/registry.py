"""The source registry: adapter name -> module, read from ``sources.yaml`` beside this module, and one way to
run an adapter.

The YAML maps each adapter name to ``module`` (importable path), ``description`` and ``format`` (where the
published format is specified). A module is an adapter if it has a ``Config`` dataclass (with ``from_dict``) and
``read(config, ctx)``; one that joins its export in DuckDB also offers ``read_batches(config, ctx)`` (Arrow
batches, no object per row), one whose source comes in many files ``parts(config)`` and
``read_part(config, ctx, part)`` (the crawl then runs one unit per part). Names resolve through the table, never
through string routing in code, so adding a source is one new module plus one registry entry.
"""

from __future__ import annotations

import importlib
import itertools
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa
import yaml

from pipeline.core.schema import CANDIDATE_SCHEMA
from pipeline.sources.base import ConfigError, CrawlContext

DEFAULT_REGISTRY = Path(__file__).resolve().parent / "sources.yaml"  # package data, installed with the package


@dataclass(frozen=True)
class AdapterInfo:
    name: str  # registry key, used by recipes
    module: str  # importable module implementing Config + read
    description: str  # one line for humans
    format: str  # where the input format is specified (URL or doc path)


def load_registry(path: str | Path | None = None) -> dict[str, AdapterInfo]:
    """Parse the registry YAML; errors name the file and the entry."""
    path = Path(path) if path else DEFAULT_REGISTRY
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: source registry not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({exc})") from None
    if not isinstance(document, dict) or not isinstance(document.get("adapters"), dict):
        raise ConfigError(f"{path}: expected a mapping with an 'adapters' mapping at the top")
    registry = {}
    for name, entry in document["adapters"].items():
        if not isinstance(entry, dict) or not isinstance(entry.get("module"), str):
            raise ConfigError(f"{path}: adapters.{name} needs a 'module' string (and description, format)")
        unknown = sorted(set(entry) - {"module", "description", "format"})
        if unknown:
            raise ConfigError(f"{path}: adapters.{name} has unknown key(s) {unknown}")
        registry[name] = AdapterInfo(name, entry["module"], entry.get("description", ""), entry.get("format", ""))
    return registry


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
    if part is not None:
        rows = iter(module.read_part(config, ctx, part))
    elif callable(getattr(module, "read_batches", None)):
        yield from module.read_batches(config, ctx)
        return
    else:
        rows = iter(module.read(config, ctx))
    while batch := list(itertools.islice(rows, batch_rows)):
        yield pa.RecordBatch.from_pylist(batch, schema=CANDIDATE_SCHEMA)
