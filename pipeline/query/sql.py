"""DuckDB over a build's manifest: the views in ``views.sql`` (package data beside this module), ready to query.

``plantmix sql`` runs SQL that someone typed or pasted, so by default its connection is read-only: after the views
exist, DuckDB may open the manifest files and nothing else (no other local file, no URL, no extension, no
setting changed back), and :func:`refuse_writes` turns away the statements that could still write to those files.
"""

from __future__ import annotations

import glob
import re
from importlib import resources
from pathlib import Path

import duckdb

from pipeline.core import duck
from pipeline.core.io import is_local, url_to_fs

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
    "released",
    "sampling",
)

# Statement kinds a read-only session may run: queries, and changes to the in-memory catalog (a scratch table, a
# macro). Everything else (COPY, EXPORT, ATTACH, PREPARE/EXECUTE, LOAD, ...) is refused, including kinds that a
# later DuckDB adds: the lock-down still lets DuckDB open the manifest files, and COPY ... TO one of them
# (USE_TMP_FILE false) would overwrite it.
_READ_ONLY_STATEMENTS = frozenset(
    {
        duckdb.StatementType.SELECT,
        duckdb.StatementType.EXPLAIN,
        duckdb.StatementType.PRAGMA,
        duckdb.StatementType.CALL,
        duckdb.StatementType.SET,
        duckdb.StatementType.VARIABLE_SET,
        duckdb.StatementType.TRANSACTION,
        duckdb.StatementType.CREATE,
        duckdb.StatementType.DROP,
        duckdb.StatementType.ALTER,
        duckdb.StatementType.INSERT,
        duckdb.StatementType.UPDATE,
        duckdb.StatementType.DELETE,
        duckdb.StatementType.MERGE_INTO,
    }
)
# EXPLAIN ANALYZE runs the statement it explains; fail closed on any that names a writing statement.
_EXPLAIN_ANALYZE_WRITE = re.compile(r"(?is)\banaly[sz]e\b.*\b(copy|export|attach)\b")


class WriteRefused(duckdb.PermissionException):
    """A read-only ``plantmix sql`` session was given a statement that could write files."""


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
    if not _is_glob(target) and not path.exists():
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
    if not _is_glob(remote) and not fs.exists(remote):
        raise FileNotFoundError(f"{url}: no such build folder or manifest file")
    return url


def _is_glob(path: str) -> bool:
    return any(c in path for c in "*?[")


def manifest_files(manifest: str) -> list[str]:
    """The files a manifest path stands for: itself, or what its glob matches now (URLs keep their protocol).

    Expanded here rather than by DuckDB so that a read-only session can allow exactly these files.
    """
    if not _is_glob(manifest):
        return [manifest]
    if is_local(manifest):
        files = sorted(glob.glob(manifest, recursive=True))
    else:
        fs, remote = url_to_fs(manifest)
        protocol = manifest.split("://", 1)[0]
        files = [f"{protocol}://{path}" for path in sorted(fs.glob(remote))]
    if not files:
        raise FileNotFoundError(f"{manifest}: no manifest file matches this pattern")
    return files


def connect(
    build_or_manifest: str | Path, database: str = ":memory:", *, read_only: bool = False
) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the PlantMix views defined over one manifest (read-only: see :func:`lock_down`)."""
    con = duckdb.connect(database)
    files = manifest_files(manifest_path(build_or_manifest))
    duck.register_filesystems(con, *files)
    # views.sql reads '{manifest}': the quotes go too, replaced by a list literal with every file escaped.
    template = views_sql()
    if "'{manifest}'" not in template:
        raise RuntimeError("pipeline/query/views.sql: expected read_parquet('{manifest}') in the view definitions")
    con.execute(template.replace("'{manifest}'", duck.file_list(files)))
    if read_only:
        lock_down(con, files)
    return con


def lock_down(con: duckdb.DuckDBPyConnection, files: list[str]) -> None:
    """Let ``con`` open ``files`` and nothing else, for good: no other file or URL, and no setting changed back.

    DuckDB checks a URL on an fsspec filesystem both as written and as the filesystem spells it
    (``memory://b/x`` and ``memory:///b/x``), so both are allowed. Its spill folder stays writable whatever we
    set, so it is moved from ``./.tmp`` (the user's working directory) to PlantMix's own spill folder.
    """
    allowed = set(files)
    for url in files:
        if not is_local(url):
            fs, remote = url_to_fs(url)
            allowed.add(fs.unstrip_protocol(remote))
    con.execute(f"SET temp_directory = {duck.literal(duck.spill_directory())}")
    con.execute(f"SET allowed_paths = {duck.file_list(sorted(allowed))}")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")


def refuse_writes(query: str) -> None:
    """Raise :class:`WriteRefused` if any statement in ``query`` could write a file (see ``_READ_ONLY_STATEMENTS``).

    A query that does not parse passes: DuckDB then reports the syntax error itself.
    """
    try:
        statements = duckdb.extract_statements(query)
    except duckdb.ParserException:
        return
    for statement in statements:
        refused = statement.type not in _READ_ONLY_STATEMENTS or (
            statement.type == duckdb.StatementType.EXPLAIN and _EXPLAIN_ANALYZE_WRITE.search(statement.query)
        )
        if refused:
            kind = statement.type.name
            raise WriteRefused(
                f"{kind} statements are refused: plantmix sql is read-only by default "
                f"(run it with --allow-writes to write files): {statement.query.strip()}"
            )


def views_sql() -> str:
    """The view definitions, read as package data (works from a checkout and from an installed wheel)."""
    return resources.files("pipeline.query").joinpath("views.sql").read_text(encoding="utf-8")
