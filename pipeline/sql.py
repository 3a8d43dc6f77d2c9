"""DuckDB over a build's manifest: the views in ``manifests/sql/views.sql``, ready to query."""

from __future__ import annotations

from pathlib import Path

import duckdb

VIEWS_FILE = Path(__file__).resolve().parent.parent / "manifests" / "sql" / "views.sql"
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
)


def manifest_path(build_or_manifest: str | Path) -> str:
    """A build folder means its ``manifest.parquet``; a file, glob or URL is used as given."""
    target = str(build_or_manifest)
    path = Path(target)
    if path.is_dir():
        path = path / "manifest.parquet"
        if not path.exists():
            raise FileNotFoundError(f"{path}: no manifest in this build folder (has the build finished?)")
        return str(path)
    if "://" not in target and not any(c in target for c in "*?[") and not path.exists():
        raise FileNotFoundError(f"{target}: no such build folder or manifest file")
    return target


def connect(build_or_manifest: str | Path, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the PlantMix views defined over one manifest."""
    con = duckdb.connect(database)
    manifest = manifest_path(build_or_manifest).replace("'", "''")
    con.execute(VIEWS_FILE.read_text().replace("{manifest}", manifest))
    return con
