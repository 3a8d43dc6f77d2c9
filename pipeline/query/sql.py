"""DuckDB over a build's manifest: the views in ``views.sql`` (package data beside this module), ready to query."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import duckdb

from pipeline.core.duck import register_filesystems
from pipeline.core.io import url_to_fs

VIEW_NAMES = (
    "samples",
    "kept",
    "by_source",
    "by_status",
    "licenses",
    "failures",
    "taxa",
    "clip_scores",
    "filter_stats",
    "duplicates",
    "contamination",
)


def manifest_path(build_or_manifest: str | Path) -> str:
    """A build folder means its ``manifest.parquet``; a file, glob or URL is used as given."""
    target = str(build_or_manifest)
    if "://" in target:
        return _remote_manifest(target)
    path = Path(target)
    if path.is_dir():
        path = path / "manifest.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no manifest in this build folder (has the build finished?)")
        return str(path)
    if "://" not in target and not any(c in target for c in "*?[") and not path.exists():
        raise FileNotFoundError(f"{target}: no such build folder or manifest file")
    return target


def _remote_manifest(url: str) -> str:
    """:func:`manifest_path` for a URL (``s3://bucket/builds/x``), with the same errors as for a local path."""
    fs, remote = url_to_fs(url)
    if fs.isdir(remote):
        manifest = url.rstrip("/") + "/manifest.parquet"
        if not fs.isfile(remote.rstrip("/") + "/manifest.parquet"):
            raise FileNotFoundError(f"{manifest}: no manifest in this build folder (has the build finished?)")
        return manifest
    if not any(c in remote for c in "*?[") and not fs.exists(remote):
        raise FileNotFoundError(f"{url}: no such build folder or manifest file")
    return url


def connect(build_or_manifest: str | Path, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the PlantMix views defined over one manifest."""
    con = duckdb.connect(database)
    path = manifest_path(build_or_manifest)
    register_filesystems(con, path)
    con.execute(views_sql().replace("{manifest}", path.replace("'", "''")))
    return con


def views_sql() -> str:
    """The view definitions, read as package data (works from a checkout and from an installed wheel)."""
    return resources.files("pipeline.query").joinpath("views.sql").read_text(encoding="utf-8")
