"""Serve ``build-plantmix`` deployments, one per trusted recipe (and ``fit-mixing-law`` for recipes with a
``mixing_law`` section), to a running Prefect server.

    prefect server start --host 127.0.0.1 --port 4200          # terminal 1
    export PREFECT_API_URL=http://127.0.0.1:4200/api
    python -m flows.serve                                      # terminal 2: serves build-plantmix/<recipe name>
    prefect deployment run build-plantmix/demo --watch         # terminal 3
    prefect deployment run fit-mixing-law/demo --watch         # the proxy runs and the mixing-law fit

Runs start in this serving process (no work pool or worker needed) and take only a recipe name and a thread
count: whoever can reach the Prefect API chooses among the recipes this process trusts, never a file, a build
folder or a scheduler. The trusted folders are ``--recipe-dir`` (repeatable) and ``PLANTMIX_RECIPE_DIRS``, searched
in that order before the repository's ``manifests/recipes/``; a recipe's build goes to its own ``output_dir``.
``--dask-address`` (or ``PLANTMIX_DASK_ADDRESS``) sends every run's units to that Dask scheduler. Relative paths
inside the recipes resolve against this process's directory: run it from the repository root.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from pathlib import Path

from prefect import serve
from prefect.deployments.runner import RunnerDeployment

from flows.build_plantmix import build_plantmix
from flows.fit_mixing_law import fit_mixing_law
from flows.trusted import recipe_names, resolve_recipe, trust
from pipeline.core.config import load_recipe


def deployments(names: list[str]) -> Iterator[RunnerDeployment]:
    for name in names:
        path = resolve_recipe(name)
        recipe = load_recipe(path)
        yield build_plantmix.to_deployment(
            name=recipe.name,
            parameters={"recipe": name},
            description=f"Build {recipe.name} from {path}",
            tags=["plantmix"],
        )
        if recipe.mixing_law is not None:
            yield fit_mixing_law.to_deployment(
                name=recipe.name,
                parameters={"recipe": name},
                description=f"Proxy runs and the data-mixing-law fit for {recipe.name} ({path})",
                tags=["plantmix"],
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.serve", description=__doc__.split("\n")[0])
    parser.add_argument("recipes", nargs="*", help="recipe names to serve (default: every trusted recipe)")
    parser.add_argument("--recipe-dir", action="append", default=[], type=Path,
                        help="a folder of trusted <name>.yaml recipes, searched before manifests/recipes/ "
                             "(repeatable; also PLANTMIX_RECIPE_DIRS)")  # fmt: skip
    parser.add_argument("--dask-address", default=None,
                        help="tcp:// or tls://host:port of the Dask scheduler every run uses "
                             "(also PLANTMIX_DASK_ADDRESS; default: threads in this process)")  # fmt: skip
    args = parser.parse_args(argv)
    trust(args.recipe_dir, args.dask_address)  # the environment the runs, child processes of this one, inherit
    serve(*deployments(args.recipes or sorted(recipe_names())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
