"""The ``build-plantmix`` flow: crawl every source, download and embed the shards, write the judged manifest.

Each step is a task wrapping one ``pipeline.build`` function. Download shards are mapped, so the
task runner decides where they run: threads on this machine by default, or a ``dask.distributed``
cluster when a scheduler address is given. Only transient errors (network, disk, a failed shard)
are retried; bad input fails the run at once with the error that names the file and row.

Run in-process (a temporary Prefect server starts by itself)::

    python -m flows.build_plantmix --recipe manifests/recipes/demo.yaml
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped
from prefect.task_runners import ThreadPoolTaskRunner

from pipeline import build, sql
from pipeline.config import Recipe, SourceSpec, load_recipe
from pipeline.download import DownloadError
from pipeline.summary import EXAMPLE_QUERY, render


def transient_only(task, task_run, state) -> bool:
    """Retry a task only for errors a second try can fix (network, disk, a shard img2dataset gave up on)."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, (DownloadError, ConnectionError, TimeoutError)) or type(error) is OSError


@task(name="crawl-source", task_run_name="crawl-{spec.name}")
def crawl_task(recipe: Recipe, spec: SourceSpec) -> dict[str, Any]:
    return build.crawl_source(recipe, spec, build.build_dir(recipe))


@task(name="plan-download")
def plan_task(recipe: Recipe) -> list[dict[str, Any]]:
    return build.plan(recipe)


@task(
    name="download-shard",
    task_run_name="download-{shard[shard_id]}",
    retries=2,
    retry_delay_seconds=5,
    retry_condition_fn=transient_only,
)
def download_task(recipe: Recipe, shard: dict[str, Any]) -> dict[str, Any]:
    return build.download(recipe, shard)


@task(
    name="embed-shard",
    task_run_name="embed-{shard[shard_id]}",
    retries=1,
    retry_delay_seconds=5,
    retry_condition_fn=transient_only,
)
def embed_task(recipe: Recipe, shard: dict[str, Any], downloaded: dict[str, Any]) -> dict[str, Any]:
    """``downloaded`` (the shard's download record) makes each embed wait for its own shard only."""
    return build.embed(recipe, shard)


@task(name="write-manifest")
def finalize_task(recipe: Recipe, shards: list[dict[str, Any]]) -> dict[str, Any]:
    return build.finalize(recipe, shards)


@flow(name="build-plantmix-stages")
def build_stages(recipe: Recipe) -> dict[str, Any]:
    crawl_task.map(recipe=unmapped(recipe), spec=recipe.sources).result()
    with build.sample_hosting(recipe) as hosted:
        shards = plan_task(hosted)
        downloaded = download_task.map(recipe=unmapped(hosted), shard=shards)
        embedded = embed_task.map(recipe=unmapped(recipe), shard=shards, downloaded=downloaded)
        downloaded.result()  # the sample host stays up until every shard is fetched
    embedded.result()
    return finalize_task(recipe, shards)


@flow(name="build-plantmix")
def build_plantmix(
    recipe: str = "manifests/recipes/demo.yaml",
    output_dir: str | None = None,
    dask_address: str | None = None,
    workers: int = 2,
) -> dict[str, Any]:
    """Build the manifest a recipe describes into its output_dir (or ``output_dir``).

    Shards run on ``workers`` threads of this process, or on the Dask cluster at ``dask_address``.
    """
    loaded = load_recipe(recipe)
    if output_dir:
        loaded.output_dir = output_dir
    if dask_address:
        from prefect_dask import DaskTaskRunner

        runner = DaskTaskRunner(address=dask_address)
    else:
        runner = ThreadPoolTaskRunner(max_workers=workers)
    return build_stages.with_options(task_runner=runner)(loaded)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.build_plantmix", description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="manifests/recipes/demo.yaml", help="build recipe (YAML)")
    parser.add_argument("--output-dir", default=None, help="build folder (default: the recipe's output_dir)")
    parser.add_argument("--dask-address", default=None, help="tcp://host:port of a Dask scheduler")
    parser.add_argument("--workers", type=int, default=2, help="concurrent shard tasks without Dask")
    args = parser.parse_args(argv)
    result = build_plantmix(
        recipe=args.recipe, output_dir=args.output_dir, dask_address=args.dask_address, workers=args.workers
    )
    print("\n" + render(result["summary"]))
    print(f"\nmanifest: {result['manifest']}")
    build_folder = str(Path(result["manifest"]).parent)
    print(f'\nexample query: plantmix sql "{EXAMPLE_QUERY}" --build {build_folder}')
    print(sql.connect(build_folder).sql(EXAMPLE_QUERY))
    return 0


if __name__ == "__main__":
    sys.exit(main())
