"""Caption near-duplicates: MinHash signatures per download shard, LSH + union-find over the whole build.

Only free-text captions take part (``caption_kind`` in the recipe's ``caption_only_kinds``, default the
original alt text / title): caption similarity alone may drop such a row. Templated plant captions ("Iris
tectorum, commonly known as Wall iris.") are the same for every image of a species, so for them duplication is
the image's business (``dedup_image``), never the caption's.

Units follow the download shards: ``dedup_caption/<shard>.signatures.npy`` (uint32 MinHash signatures, computed
in bulk by :mod:`.minhash`) and ``<shard>.ids.parquet`` (their sample_ids). The global step clusters every
signature of rows no earlier dedup stage dropped and writes ``dedup_caption/clusters.parquet``: ``sample_id``
and ``text_cluster`` (the representative's sample_id) for the members of clusters of two or more.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core import duck, schema
from pipeline.core.harness import Build, Stage, fingerprint, planned_units, read_marker, unit_fingerprints
from pipeline.core.io import open_input, read_parquet
from pipeline.core.rules import DUPLICATES, Rule
from pipeline.stages.dedup import minhash
from pipeline.stages.dedup.clusters import cluster_table
from pipeline.stages.dedup.ranking import define_downloaded, dropped_by

OUTPUT = "clusters.parquet"


class CaptionDedupStage(Stage):
    name = "dedup_caption"
    follows = "download"
    adds = ("text_cluster",)

    def enabled(self, build: Build) -> bool:
        return build.recipe.dedup is not None and build.recipe.dedup.caption is not None

    def plan(self, build: Build) -> list[str]:
        return planned_units(build.layout.stage_dir("download")) if self.enabled(build) else []

    def decides(self, build: Build, unit: str) -> Any:
        config = build.recipe.dedup.caption
        download = read_marker(build.layout.stage_dir("download"), unit) or {}
        signature = {k: getattr(config, k) for k in ("shingle", "ngram", "num_perm", "seed", "caption_only_kinds")}
        return {"signature": signature, "download": download.get("fingerprint")}

    def run(self, build: Build, unit: str, out: Path) -> dict[str, Any]:
        config, layout = build.recipe.dedup.caption, build.layout
        done = read_parquet(layout.unit_file("download", unit), columns=["sample_id", "status"])
        ok = done.filter(pc.equal(done["status"], schema.STATUS_OK)).select(["sample_id"])
        plan = read_parquet(layout.plan_file(unit), columns=["sample_id", "caption", "caption_kind"])
        rows = ok.join(plan, "sample_id")
        rows = rows.filter(pc.is_in(rows["caption_kind"], pa.array(config.caption_only_kinds, pa.string())))
        rows = rows.sort_by("sample_id")
        captions = [c or "" for c in rows["caption"].to_pylist()]
        signatures = minhash.signatures(captions, config)  # uint32, as datasketch stores them
        np.save(out / f"{unit}.signatures.npy", signatures)
        pq.write_table(rows.select(["sample_id"]), out / f"{unit}.ids.parquet")
        return {"rows": rows.num_rows}

    def output_files(self, build: Build) -> list[str]:
        return [build.layout.unit_file(self.name, OUTPUT, "")] if read_marker(self.dir(build), "_reduce") else []

    def rules(self, build: Build) -> list[Rule]:
        return [Rule("caption_duplicate", "text_cluster <> sample_id", precedence=DUPLICATES + 1)]

    def reduce_decides(self, build: Build) -> Any:
        shards = planned_units(build.layout.stage_dir("download"))
        return {
            "config": vars(build.recipe.dedup.caption),
            "units": fingerprint(unit_fingerprints(self.dir(build), shards)),
            "exact": (read_marker(build.layout.stage_dir("dedup_exact"), "_reduce") or {}).get("fingerprint"),
        }

    def reduce(self, build: Build, out: Path) -> dict[str, Any]:
        config, layout = build.recipe.dedup.caption, build.layout
        shards = planned_units(layout.stage_dir("download"))
        ids = [read_parquet(layout.unit_file(self.name, s, ".ids.parquet"))["sample_id"] for s in shards]
        ids = pa.chunked_array(ids, pa.string()).combine_chunks() if ids else pa.array([], pa.string())
        signatures = np.concatenate([_load(layout.unit_file(self.name, s, ".signatures.npy")) for s in shards]) \
            if shards else np.zeros((0, config.num_perm), np.uint32)  # fmt: skip
        con = duck.connect(build.recipe.duckdb, layout.root)
        define_downloaded(con, build)
        con.register("members", pa.table({"sample_id": ids, "pos": pa.array(np.arange(len(ids)), pa.int64())}))
        ranked = con.sql(
            f"""SELECT m.pos, d.rank FROM members m JOIN downloaded d USING (sample_id)
                WHERE m.sample_id NOT IN ({dropped_by(con, build, "dedup_exact", "exact_dup_of")})
                ORDER BY m.pos"""
        ).to_arrow_table()
        pos, rank = ranked["pos"].to_numpy(), ranked["rank"].to_numpy()
        left, right = minhash.candidate_pairs(signatures[pos], config, id_prefix=build.recipe.name)
        table, counts = cluster_table(ids, pos, left, right, rank, "text_cluster")
        pq.write_table(table, out / OUTPUT)
        return {"file": OUTPUT, "rows": len(pos), "pairs": len(left), **counts}


def _load(url: str) -> np.ndarray:
    with open_input(url) as f:
        return np.load(io.BytesIO(f.read()))
