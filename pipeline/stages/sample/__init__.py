"""Sample stage: one global step that selects the release from the judged manifest, exactly and reproducibly.

Reads the manifest the judge wrote (``keep`` says which rows may be sampled), selects exactly the recipe's count
per domain (:mod:`.select`), and leaves

- ``sample/selection.parquet``: one row per released copy (sample_id, copy, domain, position, release shard and
  key; URL-only copies last, without a position), in release order: what the publish stage packs;
- the manifest, completed in place: ``selected``, ``sample_reason``, ``sample_repeat``, ``release_shard`` and
  ``release_key`` for every row, so the build manifest says for each candidate whether and where it is released
  and, for a kept row left out, why. The judge writes these columns NULL; this step replaces them (atomically:
  a complete new file, checked, then renamed), so rerunning it after a changed sample section is safe.

Cheap and deterministic (a few DuckDB sorts), so a changed ``sample`` section redoes it.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from pipeline.core import duck, schema
from pipeline.core.duck import literal
from pipeline.core.harness import Build, Stage, read_marker
from pipeline.core.io import atomic_path, exists, read_json, url_to_fs
from pipeline.stages.sample.select import SampleShortfall, counts, decide, eligible_counts, rank_kept_rows, shortfall

SELECTION_FILE = "selection.parquet"
SAMPLE_COLUMNS = [f.name for f in schema.SAMPLE_FIELDS]

__all__ = ["SampleShortfall", "SampleStage", "SELECTION_FILE"]


class SampleStage(Stage):
    name = "sample"
    on_change = "redo"

    def enabled(self, build: Build) -> bool:
        return build.recipe.sample is not None

    def reduce_decides(self, build: Build) -> Any:
        judge = read_marker(build.layout.stage_dir("judge"), "_reduce") or {}
        return {
            "sample": dataclasses.asdict(build.recipe.sample),
            "shard_size": build.recipe.publish.shard_size,
            "judge": judge.get("fingerprint"),
            "judged_at": judge.get("finished_at"),  # a judge redone with the same inputs rewrote the manifest
            "mixing_law": fitted_share(build) if build.recipe.sample.share_from_mixing_law else None,
        }

    def reduce(self, build: Build, out: Path) -> dict[str, Any]:
        recipe, layout = build.recipe, build.layout
        config = recipe.sample
        con = duck.connect(recipe.duckdb, layout.root)
        manifest = layout.manifest
        rank_kept_rows(con, manifest, config)
        targets = config.targets(fitted_share(build) if config.share_from_mixing_law else None)
        short = shortfall(targets, eligible_counts(con), config.allow_upsampling)
        if short:
            raise SampleShortfall(short)
        decide(con, manifest, targets, config, recipe.publish.shard_size)
        con.execute(
            f"COPY (SELECT * EXCLUDE (rid) FROM selection) TO {literal(out / SELECTION_FILE)} "
            "(FORMAT parquet, COMPRESSION zstd)"
        )
        complete_manifest(con, manifest)
        by_domain = counts(con)
        packed = sum(d.get("packed", 0) for d in by_domain.values())
        copies = sum(d.get("copies", 0) for d in by_domain.values())
        shard_size = recipe.publish.shard_size
        return {
            "targets": targets,
            "by_domain": by_domain,
            "copies": copies,
            "packed": packed,
            "url_only": copies - packed,
            "shards": -(-packed // shard_size),
            "seed": config.seed,
        }


def fitted_share(build: Build) -> float:
    """The general share the mix stage chose (``mixing_law.json``); an error naming the file before it ran."""
    if not exists(build.layout.mixing_law):
        raise RuntimeError(f"sample.share_from_mixing_law: {build.layout.mixing_law} does not exist; run the mix "
                           "stage (a mixing_law section in the recipe, or the fit-mixing-law flow) first")  # fmt: skip
    share = read_json(build.layout.mixing_law).get("share")
    if share is None:
        raise RuntimeError(f"{build.layout.mixing_law}: the fit chose no share (see its problems)")
    return float(share)


def complete_manifest(con, manifest: str) -> None:
    """Replace the manifest's sample columns with ``decisions``, row order and every other column unchanged.

    The decisions are lined up with the manifest's rows (a sort of narrow rows) and joined by position, so the
    wide manifest is streamed once, never sorted. The new file is checked against the line-up before it
    replaces the old one.
    """
    source = f"read_parquet({literal(manifest)}, file_row_number = true)"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE aligned AS
        SELECT m.sample_id, coalesce(d.selected, false) AS selected, d.sample_reason, d.sample_repeat,
               s.release_shard, s.release_key
        FROM {source} m
        LEFT JOIN decisions d ON d.rid = m.file_row_number
        LEFT JOIN (SELECT rid, release_shard, release_key FROM selection WHERE copy = 0) s
            ON s.rid = m.file_row_number
        ORDER BY m.file_row_number
        """
    )
    metadata = {k.decode(): v.decode() for k, v in (_footer(manifest) or {}).items() if not k.startswith(b"ARROW")}
    keep = ", ".join(f"m.{n}" for n in schema.MANIFEST_SCHEMA.names if n not in SAMPLE_COLUMNS)
    added = ", ".join(f"a.{n}" for n in SAMPLE_COLUMNS)
    with atomic_path(manifest) as tmp:
        con.execute(
            f"""
            COPY (SELECT {keep}, {added} FROM read_parquet({literal(manifest)}) m POSITIONAL JOIN aligned a)
            TO {literal(tmp)} (FORMAT parquet, COMPRESSION zstd{duck.kv_metadata(metadata)})
            """
        )
        written = f"read_parquet({literal(tmp)})"
        moved = con.sql(
            f"SELECT count(*) FROM {written} w POSITIONAL JOIN aligned a WHERE w.sample_id IS DISTINCT FROM a.sample_id"
        ).fetchall()[0][0]
        if moved:
            raise RuntimeError(f"{manifest}: {moved} rows out of place after adding the sample columns; not replaced")


def _footer(path: str) -> dict[bytes, bytes] | None:
    fs, remote = url_to_fs(path)
    with fs.open(remote, "rb") as f:
        return pq.read_metadata(f).metadata
