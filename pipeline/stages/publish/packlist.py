"""The publish plan: every released copy with its metadata and the byte range of its image, in release order.

One DuckDB query joins the sample stage's selection (position, release shard and key), the manifest (metadata)
and the index of the download tars (where each image's bytes are) and writes ``packlist.parquet`` sorted by
position, in row groups of one release shard: a shard's unit reads only its own rows. URL-only copies (license
policy) go to ``url_only.parquet``: released as metadata and URL, never packed.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import duckdb
import pyarrow.parquet as pq

from pipeline.core import schema
from pipeline.core.duck import literal
from pipeline.core.io import join
from pipeline.core.layout import shard_name
from pipeline.stages.publish.tar_index import index_tar

PACKLIST_FILE = "packlist.parquet"
URL_ONLY_FILE = "url_only.parquet"
RELEASE_COLUMNS = schema.RELEASE_SCHEMA.names
METADATA_COLUMNS = [n for n in RELEASE_COLUMNS if n not in ("sample_id", "shard", "key", "keep", "copy")]
EMPTY_INDEX = (
    "(SELECT NULL AS tar, NULL AS key, NULL AS ext, NULL::BIGINT AS data_offset, NULL::BIGINT AS data_size WHERE false)"
)
INDEX_THREADS = 4  # reading tar headers is I/O: a few tars at once


class PackError(RuntimeError):
    """A selected row's image is not where the manifest says (a download tar changed or was lost)."""


def write_packlist(
    con: duckdb.DuckDBPyConnection, root: str, manifest: str, selection: str, shard_size: int, out: Path
) -> dict[str, Any]:
    """Write ``packlist.parquet`` and ``url_only.parquet`` into ``out``; return the release shards as units."""
    sel, man = f"read_parquet({literal(selection)})", f"read_parquet({literal(manifest)})"
    tars = [t for (t,) in con.sql(
        f"SELECT DISTINCT m.shard FROM {sel} s JOIN {man} m USING (sample_id) WHERE s.position IS NOT NULL ORDER BY 1"
    ).fetchall()]  # fmt: skip
    index = _index_tars(root, tars, out / "_index")
    meta = ", ".join(f"m.{c}" for c in METADATA_COLUMNS)
    copy_options = f"FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {max(int(shard_size), 1024)}"
    index_view = f"read_parquet({literal(str(index / '*.parquet'))})" if tars else EMPTY_INDEX
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE packed AS
        SELECT s.position, s.sample_id, s.release_shard AS shard, s.release_key AS key, true AS keep, s.copy, {meta},
               m.shard AS source_tar, m.key AS source_key, i.ext, i.data_offset, i.data_size
        FROM {sel} s JOIN {man} m USING (sample_id)
        LEFT JOIN {index_view} i ON i.tar = m.shard AND i.key = m.key
        WHERE s.position IS NOT NULL
        """
    )
    lost = con.sql("SELECT sample_id, source_tar, source_key FROM packed WHERE data_offset IS NULL LIMIT 5").fetchall()
    if lost:
        raise PackError(f"selected rows whose image is not in their download tar (sample_id, tar, key): {lost}")
    con.execute(f"COPY (SELECT * FROM packed ORDER BY position) TO {literal(out / PACKLIST_FILE)} ({copy_options})")
    con.execute(
        f"""
        COPY (SELECT s.sample_id, NULL::VARCHAR AS shard, NULL::VARCHAR AS key, false AS keep, s.copy, {meta}
              FROM {sel} s JOIN {man} m USING (sample_id) WHERE s.position IS NULL ORDER BY s.sample_id, s.copy)
        TO {literal(out / URL_ONLY_FILE)} (FORMAT parquet, COMPRESSION zstd)
        """
    )
    packed = con.sql("SELECT count(*) FROM packed").fetchall()[0][0]
    units = [shard_name(i) for i in range(-(-packed // shard_size))]
    url_only = pq.read_metadata(out / URL_ONLY_FILE).num_rows
    return {"units": units, "packed": packed, "url_only": url_only, "download_tars": len(tars)}


def _index_tars(root: str, tars: list[str], folder: Path) -> Path:
    """One Parquet index per download tar (in a scratch subfolder: only the packlist is kept)."""
    folder.mkdir(parents=True, exist_ok=True)

    def index(item: tuple[int, str]) -> None:
        i, tar = item
        pq.write_table(index_tar(join(root, tar), tar), folder / f"{i:06d}.parquet")

    with ThreadPoolExecutor(INDEX_THREADS) as pool:
        list(pool.map(index, enumerate(tars)))
    return folder
