"""What a deployed flow may be asked for: a recipe by name from trusted folders, and nothing else that reaches out.

Anyone who can reach the Prefect API can start a deployment run with parameters of their choosing, so the deployed
flows take no path, URL or address. A run names a recipe (``demo``), resolved to ``<folder>/<name>.yaml`` in the
folders the operator trusts: those named when the serving process starts (``python -m flows.serve --recipe-dir``
or ``PLANTMIX_RECIPE_DIRS``), then the repository's own ``manifests/recipes/``. The build folder is the recipe's
``output_dir``; the Dask scheduler is the serving process's (``--dask-address`` or ``PLANTMIX_DASK_ADDRESS``).

Runs of a served deployment start in child processes of ``flows.serve``, which inherit its environment: that is
how the operator's settings reach them, and why they are environment variables.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated

from pydantic import Field

RECIPE_DIRS_ENV = "PLANTMIX_RECIPE_DIRS"  # os.pathsep-separated folders, searched before the bundled one
DASK_ADDRESS_ENV = "PLANTMIX_DASK_ADDRESS"  # the scheduler deployed runs use; unset = threads in the run's process
BUNDLED_RECIPES = Path(__file__).resolve().parent.parent / "manifests" / "recipes"  # not the cwd's
RECIPE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
RECIPE_NAME_RULE = "up to 128 letters, digits, '_', '.' and '-', not starting with '.' or '-'"
MAX_WORKERS = 64

# A deployed run's thread count: bounded, so a run cannot ask the serving machine for a million threads.
Workers = Annotated[int, Field(ge=1, le=MAX_WORKERS, description=f"concurrent unit tasks (1 to {MAX_WORKERS})")]


def trusted_recipe_dirs() -> list[Path]:
    """The operator's folders (``PLANTMIX_RECIPE_DIRS``, in order), then ``manifests/recipes/``; no repeats."""
    named = [Path(d).resolve() for d in os.environ.get(RECIPE_DIRS_ENV, "").split(os.pathsep) if d.strip()]
    return list(dict.fromkeys([*named, BUNDLED_RECIPES]))


def recipe_names() -> dict[str, Path]:
    """Every recipe a deployed run may name, with the file it resolves to (the first folder that has it wins)."""
    found: dict[str, Path] = {}
    for folder in trusted_recipe_dirs():
        for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else ():
            if RECIPE_NAME.fullmatch(path.stem) and path.is_file():
                found.setdefault(path.stem, path)
    return found


def resolve_recipe(name: object) -> Path:
    """``<folder>/<name>.yaml`` from the first trusted folder that has it; ValueError naming the folders if none."""
    folders = ", ".join(str(d) for d in trusted_recipe_dirs())
    if not isinstance(name, str) or not RECIPE_NAME.fullmatch(name):
        raise ValueError(
            f"recipe {name!r}: a deployed run takes a recipe name ({RECIPE_NAME_RULE}), not a path; "
            f"it is looked up as <name>.yaml in the trusted recipe folders: {folders}"
        )
    known = recipe_names()
    if name not in known:
        raise ValueError(
            f"recipe {name!r}: no {name}.yaml in the trusted recipe folders: {folders} "
            f"(recipes there: {', '.join(sorted(known)) or 'none'})"
        )
    return known[name]


def dask_address() -> str | None:
    """The serving process's Dask scheduler (``PLANTMIX_DASK_ADDRESS``), or None for threads."""
    return os.environ.get(DASK_ADDRESS_ENV) or None


def trust(recipe_dirs: Iterable[str | Path] = (), dask_address: str | None = None) -> None:
    """Set this process's (and so its runs') trusted folders, put before any already set, and Dask scheduler."""
    named = [str(Path(d).resolve()) for d in recipe_dirs]
    for folder in named:
        if not Path(folder).is_dir():
            raise ValueError(f"--recipe-dir {folder}: not a folder")
    already = [str(Path(d).resolve()) for d in os.environ.get(RECIPE_DIRS_ENV, "").split(os.pathsep) if d.strip()]
    if named or already:
        os.environ[RECIPE_DIRS_ENV] = os.pathsep.join(dict.fromkeys([*named, *already]))
    if dask_address:
        os.environ[DASK_ADDRESS_ENV] = dask_address
