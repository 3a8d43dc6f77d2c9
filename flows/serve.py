"""Serve ``build-plantmix`` deployments, one per recipe (and ``fit-mixing-law`` for recipes with a
``mixing_law`` section), to a running Prefect server.

    prefect server start --host 127.0.0.1 --port 4200          # terminal 1
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve                                      # terminal 2: serves build-plantmix/<recipe name>
    prefect deployment run build-plantmix/demo --watch         # terminal 3
    prefect deployment run fit-mixing-law/demo --watch         # the proxy runs and the mixing-law fit

Runs start in this serving process (no work pool or worker needed); run it from the repository root
so the recipes' relative paths resolve. Override parameters per run, e.g.
``prefect deployment run build-plantmix/demo --param output_dir=/data/builds/demo``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prefect import serve

from flows.build_plantmix import build_plantmix
from flows.fit_mixing_law import fit_mixing_law
from pipeline.core.config import load_recipe

RECIPES = Path("manifests/recipes")


def deployments(recipe_paths: list[Path]):
    for path in recipe_paths:
        recipe = load_recipe(path)
        yield build_plantmix.to_deployment(
            name=recipe.name,
            parameters={"recipe": str(path)},
            description=f"Build {recipe.name} from {path}",
            tags=["plantmix"],
        )
        if recipe.mixing_law is not None:
            yield fit_mixing_law.to_deployment(
                name=recipe.name,
                parameters={"recipe": str(path)},
                description=f"Proxy runs and the data-mixing-law fit for {recipe.name} ({path})",
                tags=["plantmix"],
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n")[0])
    parser.add_argument("recipes", nargs="*", type=Path, help="recipe files (default: manifests/recipes/*.yaml)")
    args = parser.parse_args(argv)
    paths = args.recipes or sorted(RECIPES.glob("*.yaml"))
    serve(*deployments(paths))
    return 0


if __name__ == "__main__":
    sys.exit(main())
