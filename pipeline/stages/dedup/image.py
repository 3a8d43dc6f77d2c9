"""Image near-duplicates: FAISS over the embed stage's stored image embeddings, clusters by union-find.

One global step after embed: the L2-normalised image embeddings of every shard (``embed/<shard>.image.npy``, in
the row order of ``embed/<shard>.parquet``) of rows that no earlier dedup stage dropped are searched for pairs
above the recipe's cosine threshold (:mod:`.faiss_search`: exact search below a size, IVF above, in chunks;
SemDeDup as an option); pairs become clusters by union-find, and each cluster keeps its best-ranked row.
Writes ``dedup_image/clusters.parquet``: ``sample_id`` and ``image_cluster`` (the representative's sample_id)
for the members of clusters of two or more.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import duck
from pipeline.core.harness import Build, Stage, fingerprint, planned_units, read_marker, unit_fingerprints
from pipeline.core.io import open_input, read_parquet
from pipeline.core.rules import DUPLICATES, Rule
from pipeline.stages.dedup import faiss_search
from pipeline.stages.dedup.clusters import cluster_table
from pipeline.stages.dedup.ranking import define_downloaded, dropped_by

OUTPUT = "clusters.parquet"


class ImageDedupStage(Stage):
    name = "dedup_image"
    adds = ("image_cluster",)

    def enabled(self, build: Build) -> bool:
        return build.recipe.dedup is not None and build.recipe.dedup.image is not None

    def output_files(self, build: Build) -> list[str]:
        return [build.layout.unit_file(self.name, OUTPUT, "")] if read_marker(self.dir(build), "_reduce") else []

    def rules(self, build: Build) -> list[Rule]:
        return [Rule("image_duplicate", "image_cluster <> sample_id", precedence=DUPLICATES + 2)]

    def reduce_decides(self, build: Build) -> Any:
        layout = build.layout
        shards = planned_units(layout.stage_dir("download"))
        earlier = {s: (read_marker(layout.stage_dir(s), "_reduce") or {}).get("fingerprint")
                   for s in ("dedup_exact", "dedup_caption")}  # fmt: skip
        return {
            "config": vars(build.recipe.dedup.image),
            "embed": fingerprint(unit_fingerprints(layout.stage_dir("embed"), shards)),
            **earlier,
        }

    def reduce(self, build: Build, out: Path) -> dict[str, Any]:
        config, layout = build.recipe.dedup.image, build.layout
        shards = planned_units(layout.stage_dir("download"))
        ids = [read_parquet(layout.unit_file("embed", s), columns=["sample_id"])["sample_id"] for s in shards]
        ids = pa.chunked_array(ids, pa.string()).combine_chunks() if ids else pa.array([], pa.string())
        con = duck.connect(build.recipe.duckdb, layout.root)
        define_downloaded(con, build)
        con.register("members", pa.table({"sample_id": ids, "pos": pa.array(np.arange(len(ids)), pa.int64())}))
        exact = dropped_by(con, build, "dedup_exact", "exact_dup_of")
        caption = dropped_by(con, build, "dedup_caption", "text_cluster", "text_cluster <> sample_id")
        ranked = con.sql(
            f"""SELECT m.pos, d.rank FROM members m JOIN downloaded d USING (sample_id)
                WHERE m.sample_id NOT IN ({exact}) AND m.sample_id NOT IN ({caption})
                ORDER BY m.pos"""
        ).to_arrow_table()
        pos, rank = ranked["pos"].to_numpy(), ranked["rank"].to_numpy()
        embeddings = _gather(layout, shards, pos)
        pairs = faiss_search.duplicate_pairs(embeddings, config) if len(pos) else (np.zeros(0, np.int64),) * 3
        left, right = pairs[0], pairs[1]
        table, counts = cluster_table(ids, pos, left, right, rank, "image_cluster")
        pq.write_table(table, out / OUTPUT)
        stats = {"file": OUTPUT, "rows": len(pos), **counts, "method": config.method}
        if len(pos) > config.exact_max_rows:  # approximate search: say how close to exact it was
            stats["recall_vs_exact"] = faiss_search.recall_against_exact(embeddings, config, pairs=pairs)
        return stats


def _gather(layout, shards: list[str], positions: np.ndarray) -> np.ndarray:
    """The float16 embeddings at ``positions`` of the concatenation of every shard's sidecar, shard by shard."""
    parts, offset = [], 0
    for shard in shards:
        with open_input(layout.embeddings(shard, "image")) as f:
            vectors = np.load(io.BytesIO(f.read()))
        lo, hi = np.searchsorted(positions, [offset, offset + len(vectors)])
        parts.append(vectors[positions[lo:hi] - offset])
        offset += len(vectors)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float16)
