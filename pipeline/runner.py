"""Run the build's stages in order in this process, without an orchestrator (tests, benchmarks, debugging).

The flow (``flows/build_plantmix.py``) runs the same :data:`pipeline.stages.STAGES` with Prefect tasks; both go
through the same harness calls, so a build started by one can be resumed by the other.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any
from urllib.parse import urlsplit

from pipeline.core.config import Recipe
from pipeline.core.harness import Build, Stage, run_reduce, run_unit
from pipeline.core.io import exists, join, read_json
from pipeline.demo.sample_server import SampleServer
from pipeline.stages import STAGES


@contextmanager
def sample_hosting(recipe: Recipe) -> Iterator[Recipe]:
    """Serve the bundled sample on loopback for the build, when the recipe asks for it.

    Yields the recipe with the sample's URL prefix rewritten to the server for the download, and that server's
    loopback address and port (only those) allowlisted in the fetch policy; the manifest keeps the URLs as the
    exports publish them (``url_rewrite`` does not change a shard's output, so the rewritten recipe resumes
    the same build).
    """
    if not recipe.serve_sample:
        yield recipe
        return
    with SampleServer(recipe.serve_sample) as server:
        download = dataclasses.replace(
            recipe.download,
            url_rewrite={**recipe.download.url_rewrite, recipe.sample_host: server.url},
            allow_local_hosts=[*recipe.download.allow_local_hosts, urlsplit(server.url).netloc],
        )
        yield dataclasses.replace(recipe, download=download)


def run_stage(stage: Stage, build: Build) -> dict[str, Any]:
    """Plan, every unit, then the global step of one stage; returns the unit records and the reduce record."""
    units = stage.plan(build)
    records = [run_unit(stage, build, unit) for unit in units]
    return {"units": records, "reduce": run_reduce(stage, build)}


def run_build(recipe: Recipe, stages: Sequence[Stage] = STAGES) -> dict[str, Any]:
    """Every stage in order in this process: no orchestrator, no concurrency between units."""
    with sample_hosting(recipe) as hosted:
        build = Build.of(hosted)
        for stage in stages:
            run_stage(stage, build)
    return result(build)


def result(build: Build) -> dict[str, Any]:
    """What a finished build reports: the manifest's path and its summary, and the release where there is one."""
    done = {"manifest": build.layout.manifest, "summary": read_json(build.layout.summary), "release": None}
    release_json = join(build.layout.release, "release.json")
    if build.recipe.sample is not None and exists(release_json):
        done["release"] = {"folder": build.layout.release, **read_json(release_json)}
    return done
