"""The ``build-plantmix`` flow: every stage of :data:`pipeline.stages.STAGES`, in order, as Prefect tasks.

For each stage: a plan task (its units), one task per unit (mapped, so the task runner decides where they run:
threads here by default, or a ``dask.distributed`` cluster), then its global step. A stage that ``follows`` the
previous one (embed follows download) starts unit k as soon as that stage's unit k is done. Only transient errors
(network, disk, a dead shard worker) are retried; bad input fails the run at once with the error that names the
file and row. Each stage publishes its counts, and long stages their progress, as Prefect artifacts.

Run in-process (a temporary Prefect server starts by itself)::

    python -m flows.build_plantmix --recipe manifests/recipes/demo.yaml

The command line (:func:`build_from_file`) takes any recipe file, build folder and Dask scheduler: it runs as the
local user. The deployed flow (:func:`build_plantmix`, served by :mod:`flows.serve`) takes only a recipe name and
a thread count (see :mod:`flows.trusted`).
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from prefect import flow, task, unmapped
from prefect.futures import PrefectFuture, as_completed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows import trusted
from flows.artifacts import Progress, publish_release, publish_stage, publish_summary
from pipeline.core.config import Recipe, load_recipe
from pipeline.core.harness import TRANSIENT_ERRORS, Build, Stage, run_reduce, run_unit
from pipeline.query import sql
from pipeline.query.summary import EXAMPLE_QUERY, render
from pipeline.runner import result, sample_hosting
from pipeline.stages import STAGES


def transient_only(task, task_run, state) -> bool:
    """Retry a task only for errors a second try can fix (network, disk, a shard img2dataset gave up on)."""
    error = state.result(raise_on_failure=False)
    return isinstance(error, TRANSIENT_ERRORS) or type(error) is OSError


@task(name="plan", task_run_name="plan-{stage.name}")
def plan_task(stage: Stage, build: Build) -> list[str]:
    return stage.plan(build)


@task(name="unit", task_run_name="{stage.name}-{unit}", retry_delay_seconds=5, retry_condition_fn=transient_only)
def unit_task(stage: Stage, build: Build, unit: str) -> dict[str, Any]:
    return run_unit(stage, build, unit)


@task(name="reduce", task_run_name="reduce-{stage.name}")
def reduce_task(stage: Stage, build: Build) -> dict[str, Any] | None:
    return run_reduce(stage, build)


class _Running:
    """A stage whose units are in flight."""

    def __init__(self, stage: Stage, futures: list[PrefectFuture], progress: Progress) -> None:
        self.stage, self.futures, self.progress = stage, futures, progress


def _start(stage: Stage, build: Build, upstream: _Running | None) -> _Running:
    units = plan_task(stage, build)
    mapped = unit_task.with_options(retries=stage.retries)
    if upstream is not None:  # unit k waits for upstream unit k only
        futures = [
            mapped.submit(stage, build, unit, wait_for=[up]) for unit, up in zip(units, upstream.futures, strict=True)
        ]
    else:
        futures = list(mapped.map(stage=unmapped(stage), build=unmapped(build), unit=units))
    return _Running(stage, futures, Progress(build, stage, len(units)))


def _finish(running: list[_Running], build: Build) -> None:
    """Wait for every unit in flight (progress as they finish), then each stage's global step and artifacts."""
    by_future = {id(f): r for r in running for f in r.futures}
    for future in as_completed([f for r in running for f in r.futures]):
        future.result()  # a failed unit fails the flow here, with its own error
        by_future[id(future)].progress.advance()
    for r in running:
        reduce_task(r.stage, build)
        publish_stage(build, r.stage)


def stages_until(last: str | None) -> tuple[Stage, ...]:
    """``STAGES`` up to and including the one named ``last`` (all of them for None)."""
    names = [stage.name for stage in STAGES]
    if last is None:
        return STAGES
    if last not in names:
        raise ValueError(f"no stage {last!r}; stages: {', '.join(names)}")
    return STAGES[: names.index(last) + 1]


@flow(name="build-plantmix-stages")
def build_stages(recipe: Recipe, until: str | None = None) -> dict[str, Any]:
    with sample_hosting(recipe) as hosted:  # the sample host, if any, stays up for the whole chain
        build = Build.of(hosted)
        running: list[_Running] = []
        for stage in stages_until(until):
            follows = running[-1] if running and stage.follows == running[-1].stage.name else None
            if follows is None:
                _finish(running, build)
                running = []
            running.append(_start(stage, build, follows))
        _finish(running, build)
    done = result(build)
    publish_summary(build, done["summary"])
    publish_release(build)
    return done


def task_runner(dask_address: str | None, workers: int) -> TaskRunner:
    """Units on the Dask cluster at ``dask_address`` (TLS from the dask config for ``tls://``), else on threads."""
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    return ThreadPoolTaskRunner(max_workers=workers)


def build_from_file(
    recipe_path: str, output_dir: str | None = None, dask_address: str | None = None, workers: int = 2
) -> dict[str, Any]:
    """The ``build-plantmix`` flow for a local user: any recipe file, into its output_dir or ``output_dir``.

    Units run on ``workers`` threads of this process, or on the Dask cluster at ``dask_address``.
    """
    loaded = load_recipe(recipe_path)
    if output_dir:
        loaded.output_dir = output_dir
    runner = task_runner(dask_address, workers)
    return build_stages.with_options(name="build-plantmix", task_runner=runner)(loaded)


@flow(name="build-plantmix")
def build_plantmix(recipe: str = "demo", workers: trusted.Workers = 2) -> dict[str, Any]:
    """Build the trusted recipe named ``recipe`` into its own output_dir (the deployed flow: no paths, no addresses).

    Units run on ``workers`` threads, or on the serving process's Dask cluster (``flows.serve --dask-address``).
    """
    loaded = load_recipe(trusted.resolve_recipe(recipe))
    return build_stages.with_options(task_runner=task_runner(trusted.dask_address(), workers))(loaded)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.build_plantmix", description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="manifests/recipes/demo.yaml", help="build recipe (YAML)")
    parser.add_argument("--output-dir", default=None, help="build folder or URL (default: the recipe's output_dir)")
    parser.add_argument("--dask-address", default=None, help="tcp:// or tls://host:port of a Dask scheduler")
    parser.add_argument("--workers", type=int, default=2, help="concurrent unit tasks without Dask")
    args = parser.parse_args(argv)
    done = build_from_file(args.recipe, args.output_dir, args.dask_address, args.workers)
    print("\n" + render(done["summary"]))
    print(f"\nmanifest: {done['manifest']}")
    build_folder = done["manifest"].rsplit("/", 1)[0]
    print(f'\nexample query: plantmix sql "{EXAMPLE_QUERY}" --build {build_folder}')
    print(sql.connect(build_folder).sql(EXAMPLE_QUERY))
    if done.get("release"):
        print(release_notice(done["release"]))
    return 0


def release_notice(release: dict[str, Any]) -> str:
    """Where the release card is and how to train on the release."""
    folder, counts = release["folder"], release["counts"]
    last = counts["shards"] - 1
    return "\n".join([
        f"\nrelease: {folder} ({counts['packed']} samples in {counts['shards']} shards; card: {folder}/RELEASE.md)",
        "train DALIP on it:",
        f"  python -m dalip.train --manifest {folder}/manifest.parquet --model DALIP-Tiny --epochs 2 --batch-size 16 "
        f"--precision fp32 --output-dir runs/{release['name']}",
        "or with open_clip's own trainer:",
        "  python -m dalip.tiny runs/DALIP-Tiny",
        f"  python -m open_clip_train.main --dataset-type webdataset "
        f"--train-data '{folder}/shards/{{00000..{last:05d}}}.tar' --train-num-samples {counts['packed']} "
        "--model local-dir:runs/DALIP-Tiny --device cpu --precision fp32 --batch-size 16 --epochs 1 --report-to ''",
    ])  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
