"""The build's steps as plain functions, in order; flows wrap each one in a task.

``run_build`` runs them sequentially without any orchestrator (tests, benchmarks, debugging).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import duckdb
import numpy as np

from pipeline import __version__, schema
from pipeline.config import Recipe, recipe_to_dict
from pipeline.crawl import candidate_files, crawl_source
from pipeline.download import download_shard, plan_shards
from pipeline.embed import embed_shard, scores_table
from pipeline.filter import top_fraction_thresholds
from pipeline.io import read_parquets, write_json
from pipeline.manifest import Scores, merge_manifest, write_manifest
from pipeline.sample_server import SampleServer
from pipeline.summary import summarize


def build_dir(recipe: Recipe) -> Path:
    return Path(recipe.output_dir).resolve()


@contextmanager
def sample_hosting(recipe: Recipe) -> Iterator[Recipe]:
    """Serve the bundled sample on loopback for the build, when the recipe asks for it.

    Yields the recipe with the sample's URL prefix rewritten to the server for the download; the
    manifest keeps the URLs as the exports publish them.
    """
    if not recipe.serve_sample:
        yield recipe
        return
    with SampleServer(recipe.serve_sample) as server:
        rewrite = {**recipe.download.url_rewrite, recipe.sample_host: server.url}
        yield dataclasses.replace(recipe, download=dataclasses.replace(recipe.download, url_rewrite=rewrite))


def plan(recipe: Recipe) -> list[dict[str, Any]]:
    out = build_dir(recipe)
    candidates = read_parquets(candidate_files(recipe, out), schema.CANDIDATE_SCHEMA)
    return plan_shards(candidates, out / "download" / "plan", recipe.download.shard_size)


def download(recipe: Recipe, shard: dict[str, Any]) -> dict[str, Any]:
    out = build_dir(recipe)
    return download_shard(out / "download" / "plan", out / "download", shard, recipe.download)


def embed(recipe: Recipe, shard: dict[str, Any]) -> dict[str, Any]:
    """CLIP embeddings and scores for one downloaded shard (no-op when the recipe has no embed stage)."""
    if recipe.embed is None:
        return {"skipped": "no embed stage in the recipe"}
    return embed_shard(build_dir(recipe), shard["shard_id"], recipe.embed, recipe.download.encode_format)


def clip_scores(recipe: Recipe, shard_ids: list[int]) -> Scores | None:
    """Read every shard's scores and reduce the per-domain top-fraction thresholds."""
    if recipe.embed is None:
        return None
    out = build_dir(recipe)
    table = scores_table(out, shard_ids, recipe.embed)
    con = duckdb.connect()
    con.register("scores", table)
    con.register("candidates", read_parquets(candidate_files(recipe, out), schema.CANDIDATE_SCHEMA))
    rows = con.sql(
        "SELECT c.domain, list(s.clip_score) FROM scores s JOIN candidates c USING (sample_id) GROUP BY 1"
    ).fetchall()
    by_domain = {domain: np.asarray(values, np.float32) for domain, values in rows}
    thresholds = top_fraction_thresholds(by_domain, recipe.filter.clip_top_fraction)
    return Scores(table.select(["sample_id", "clip_score"]), recipe.embed.model_id, thresholds)


def finalize(recipe: Recipe, shards: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge crawl + download + scores into the judged manifest; write the summary and the provenance."""
    out = build_dir(recipe)
    shard_ids = [s["shard_id"] for s in shards]
    scores = clip_scores(recipe, shard_ids)
    table = merge_manifest(candidate_files(recipe, out), out / "download", shard_ids, scores, recipe.filter)
    manifest = write_manifest(table, out)
    summary = summarize(manifest)
    if scores is not None:
        summary["clip_model"] = scores.model
        summary["clip_top_fraction_thresholds"] = scores.thresholds
    write_json(out / "summary.json", summary)
    write_json(
        out / "build.json",
        {"recipe": recipe_to_dict(recipe), "code_version": __version__, "finished_at": time.time()},
    )
    return {"manifest": str(manifest), "summary": summary}


def run_build(recipe: Recipe) -> dict[str, Any]:
    """Every step in order in this process: no orchestrator, no concurrency between shards."""
    out = build_dir(recipe)
    for spec in recipe.sources:
        crawl_source(recipe, spec, out)
    with sample_hosting(recipe) as hosted:
        shards = plan(hosted)
        for shard in shards:
            download(hosted, shard)
    for shard in shards:
        embed(recipe, shard)
    return finalize(recipe, shards)
