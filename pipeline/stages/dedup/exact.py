"""Exact duplicates: the same canonical URL or the same image bytes among the downloaded rows.

One global step (DuckDB + union-find over the duplicated rows only): groups by canonical URL (scheme, host
case, a default port and the fragment do not make two URLs different) and by ``image_sha256``, joined
transitively; each group keeps its best-ranked row (:mod:`.ranking`) and every other member gets
``exact_dup_of`` = that row. Writes ``dedup_exact/exact.parquet`` (``sample_id``, ``exact_dup_of``,
``exact_cluster``) for the members of duplicate groups only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import duck
from pipeline.core.harness import Build, Stage, fingerprint, planned_units, read_marker, unit_fingerprints
from pipeline.core.rules import DUPLICATES, Rule
from pipeline.stages.dedup.clusters import KEEP_RULE, components, representatives
from pipeline.stages.dedup.ranking import define_downloaded

OUTPUT = "exact.parquet"
# Canonical URL: lower-cased host without a default port, path and query as published, no fragment or scheme.
CANONICAL_URL_SQL = (
    "regexp_replace(lower(regexp_extract(url, '^[a-zA-Z][a-zA-Z0-9+.-]*://([^/?#]*)', 1)), ':(80|443)$', '') "
    "|| regexp_extract(url, '^[a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]*([^#]*)', 1)"
)


class ExactDedupStage(Stage):
    name = "dedup_exact"
    adds = ("exact_dup_of",)

    def enabled(self, build: Build) -> bool:
        return build.recipe.dedup is not None and build.recipe.dedup.exact is not None

    def output_files(self, build: Build) -> list[str]:
        return [build.layout.unit_file(self.name, OUTPUT, "")] if read_marker(self.dir(build), "_reduce") else []

    def rules(self, build: Build) -> list[Rule]:
        return [Rule("exact_duplicate", "exact_dup_of IS NOT NULL", precedence=DUPLICATES)]

    def reduce_decides(self, build: Build) -> Any:
        layout = build.layout
        shards = planned_units(layout.stage_dir("download"))
        return {
            "config": vars(build.recipe.dedup.exact),
            "crawl": unit_fingerprints(layout.stage_dir("crawl"), [s.name for s in build.recipe.sources]),
            "download": fingerprint(unit_fingerprints(layout.stage_dir("download"), shards)),
        }

    def reduce(self, build: Build, out: Path) -> dict[str, Any]:
        config = build.recipe.dedup.exact
        con = duck.connect(build.recipe.duckdb, build.layout.root)
        define_downloaded(con, build)
        keys = [k for k, on in (("url", config.by_url), ("image_sha256", config.by_image_sha256)) if on]
        members = duplicate_members(con, keys)
        n = members.num_rows
        index = {k: members[k].to_numpy() for k in ("idx", "rank")}
        left, right = [], []
        for key in keys:  # star edges: each member to the first member of its group, per key
            left.append(members[f"{key}_first"].to_numpy())
            right.append(index["idx"])
        labels = components(n, np.concatenate(left) if left else [], np.concatenate(right) if right else [])
        reps = representatives(labels, index["rank"])
        ids = members["sample_id"].to_numpy(zero_copy_only=False)
        rep_ids = ids[reps]
        dup_of = np.where(reps == np.arange(n), None, rep_ids)
        table = pa.table(
            {
                "sample_id": pa.array(ids, pa.string()),
                "exact_dup_of": pa.array(dup_of, pa.string()),
                "exact_cluster": pa.array(rep_ids, pa.string()),
            }
        )
        pq.write_table(table, out / OUTPUT)
        dropped = int(table["exact_dup_of"].is_valid().to_numpy(zero_copy_only=False).sum())
        return {"file": OUTPUT, "rows": n, "groups": int(np.unique(labels).size), "duplicates": dropped,
                "keys": keys, "keep_rule": KEEP_RULE}  # fmt: skip


def duplicate_members(con, keys: list[str]) -> pa.Table:
    """Rows in a group of 2+ by any key: ``idx`` (0..n-1), ``rank``, and per key the idx of its group's first row
    (``<key>_first``, its own idx when its key value is unique). Only duplicated rows reach Python."""
    if not keys:
        return pa.table({"idx": pa.array([], pa.int64()), "rank": pa.array([], pa.int64()), "sample_id": []})
    key_sql = {"url": CANONICAL_URL_SQL, "image_sha256": "image_sha256"}
    keyed = ", ".join(f"{key_sql[k]} AS k_{k}" for k in keys)
    dup = " OR ".join(
        f"k_{k} IN (SELECT k_{k} FROM keyed WHERE k_{k} IS NOT NULL GROUP BY 1 HAVING count(*) > 1)" for k in keys
    )
    firsts = ", ".join(f"first_value(idx) OVER (PARTITION BY coalesce(k_{k}, sample_id) ORDER BY idx) AS {k}_first"
                       for k in keys)  # fmt: skip
    return con.sql(
        f"""
        WITH keyed AS (SELECT sample_id, rank, {keyed} FROM downloaded),
        members AS (SELECT *, (row_number() OVER (ORDER BY rank) - 1) AS idx FROM keyed WHERE {dup})
        SELECT sample_id, rank, idx, {firsts} FROM members ORDER BY idx
        """
    ).to_arrow_table()
