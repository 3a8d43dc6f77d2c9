"""The ``fit-mixing-law`` flow: a build up to its kept rows, then proxy runs at several general shares (in
parallel: one task per share), the data-mixing law fitted per domain and the general share chosen.

It is :mod:`flows.build_plantmix`'s stage loop stopped after the ``mix`` stage, so it shares every finished
stage with a ``build-plantmix`` run of the same recipe (and a later ``build-plantmix`` run reuses its proxies):
run it first, then ``build-plantmix`` samples at the fitted share (``sample.share_from_mixing_law``) and the
release card shows the fit. It leaves ``<output_dir>/mixing_law.json`` and ``mixing_law.png``.

    python -m flows.fit_mixing_law --recipe manifests/recipes/demo.yaml
    prefect deployment run fit-mixing-law/demo        # with python -m flows.serve running

As with ``build-plantmix``, the command line (:func:`fit_from_file`) takes any recipe file; the deployed flow
(:func:`fit_mixing_law`) only a trusted recipe's name (:mod:`flows.trusted`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from prefect import flow
from prefect.artifacts import create_markdown_artifact
from prefect.task_runners import ThreadPoolTaskRunner

from flows.artifacts import artifact_key
from flows.build_plantmix import build_stages
from flows.trusted import Workers, resolve_recipe
from pipeline.core.config import Recipe, load_recipe
from pipeline.core.harness import Build
from pipeline.core.io import read_json
from pipeline.mixing.cli import render


@flow(name="fit-mixing-law")
def fit_recipe(recipe: Recipe, workers: int = 2) -> dict[str, Any]:
    """Build the recipe up to its kept rows, run one proxy per share, fit the law; returns ``mixing_law.json``."""
    if recipe.mixing_law is None:
        raise ValueError(f"{recipe.path or recipe.name}: no mixing_law section; nothing to fit")
    build_stages.with_options(task_runner=ThreadPoolTaskRunner(max_workers=workers))(recipe, until="mix")
    build = Build.of(recipe)
    result = read_json(build.layout.mixing_law)
    markdown = "\n".join([f"# Mixing law: {recipe.name}", "", "```", render(result), "```", "",
                          f"Fit: `{build.layout.mixing_law}`, plot: `{build.layout.mixing_law_plot}`"])  # fmt: skip
    create_markdown_artifact(markdown, key=artifact_key(build, "mixing-law"), description="data-mixing-law fit")
    return result


def fit_from_file(recipe_path: str, output_dir: str | None = None, workers: int = 2) -> dict[str, Any]:
    """The ``fit-mixing-law`` flow for a local user: any recipe file, into its output_dir or ``output_dir``."""
    loaded = load_recipe(recipe_path)
    if output_dir:
        loaded.output_dir = output_dir
    return fit_recipe(loaded, workers)


@flow(name="fit-mixing-law")
def fit_mixing_law(recipe: str = "demo", workers: Workers = 2) -> dict[str, Any]:
    """The deployed flow: the trusted recipe named ``recipe``, into its own output_dir (no paths, no addresses)."""
    return fit_recipe.fn(load_recipe(resolve_recipe(recipe)), workers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.fit_mixing_law", description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="manifests/recipes/demo.yaml", help="build recipe (YAML)")
    parser.add_argument("--output-dir", default=None, help="build folder or URL (default: the recipe's output_dir)")
    parser.add_argument("--workers", type=int, default=2, help="proxies trained at once")
    args = parser.parse_args(argv)
    result = fit_from_file(args.recipe, args.output_dir, args.workers)
    print(render(result))
    print(json.dumps({"share": result["share"], "reliable": result["reliable"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
