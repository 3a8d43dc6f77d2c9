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

from pipeline import __version__, schema
from pipeline.config import Recipe, recipe_to_dict
from pipeline.crawl import candidate_files, crawl_source
from pipeline.download import download_shard, plan_shards
from pipeline.io import read_parquets, write_json
from pipeline.manifest import merge_manifest, write_manifest
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


def finalize(recipe: Recipe, shards: list[dict[str, Any]]) -> dict[str, Any]:
    """Merge crawl + download into the manifest, then write the summary and the build's provenance."""
    out = build_dir(recipe)
    table = merge_manifest(candidate_files(recipe, out), out / "download", [s["shard_id"] for s in shards])
    manifest = write_manifest(table, out)
    summary = summarize(manifest)
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
    return finalize(recipe, shards)
