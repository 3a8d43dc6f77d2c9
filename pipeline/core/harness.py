"""The stage contract and the harness that runs it: markers, fingerprints, per-unit stats, atomic outputs.

Every stage of the build is a :class:`Stage` (datatrove's ``PipelineStep`` is the model) with one shape:

- ``plan(build) -> units``: the shards it runs over (source names, download shards, ...). A stage whose units
  come from a global step (the download plan) runs that step with :func:`run_step`, so it is marked too;
- ``run(build, unit, out)``: the work for one unit. It writes the unit's files (its own ``<unit>.parquet`` of
  ``sample_id`` + the columns it adds, sidecars) into the local folder ``out`` and returns its stats;
- ``reduce(build, out)``: an optional global step after every unit (thresholds, clustering, the merge).

The harness does everything else, for units and global steps alike: it skips work whose marker exists, refuses
(or, for cheap deterministic work, redoes) work whose marker records another fingerprint of the inputs and
settings, runs the work in a fresh temporary folder (``<stage>/_tmp/<unit>/<random>`` on a local disk: one folder
per unit, so units running side by side never clear each other's), moves all of its files into place and writes
the marker last. A crash or kill at any point leaves either no marker (the rerun redoes the unit and overwrites
its files by name, so nothing is duplicated) or a complete unit. The stages are declared once, in order, in
:mod:`pipeline.stages`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shutil
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from pipeline.core.config import Recipe
from pipeline.core.io import is_local, join, listdir_names, publish_files, read_json, url_to_fs, write_json
from pipeline.core.layout import BuildLayout, check_safe_name
from pipeline.core.rules import Rule
from pipeline.core.version import code_version

MARKER_SUFFIX = ".done.json"


class StageMismatch(RuntimeError):
    """Finished work was made from other inputs or settings than the current run's."""


class TransientError(RuntimeError):
    """A unit failed for a reason a second try can fix (a dead worker, a shard img2dataset gave up on)."""


# Errors worth a retry: network and disk trouble, and the stages' own transient failures. Bad input is not.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (TransientError, ConnectionError, TimeoutError)


@dataclass(frozen=True)
class Build:
    """What every stage gets: the validated recipe and where the build's files live."""

    recipe: Recipe
    layout: BuildLayout

    @classmethod
    def of(cls, recipe: Recipe) -> Build:
        return cls(recipe, BuildLayout.at(recipe.output_dir))


class Stage:
    """One step of the build; subclasses set ``name`` and implement ``run`` and/or ``reduce``."""

    name: ClassVar[str]  # the stage's folder under the build
    # Units are the units of this earlier stage, one to one: an orchestrator may start unit k as soon as that
    # stage's unit k is done (embed follows download shard by shard).
    follows: ClassVar[str | None] = None
    # A changed fingerprint on finished work (a unit or global step): "refuse" (the default, for costly work) or "redo".
    on_change: ClassVar[str] = "refuse"
    # How often an orchestrator may retry a unit that failed with a transient error (see TRANSIENT_ERRORS).
    retries: ClassVar[int] = 0
    # Manifest columns this stage adds: its output Parquet files hold ``sample_id`` + these; the judge joins them.
    adds: ClassVar[tuple[str, ...]] = ()

    def enabled(self, build: Build) -> bool:
        """False when the recipe turns the stage off: it plans no unit, runs no global step, adds NULL columns."""
        return True

    def units(self, build: Build) -> list[str]:
        """The units ``plan`` chose, read back without running anything (the followed stage's, or its own)."""
        return planned_units(build.layout.stage_dir(self.follows or self.name))

    def output_files(self, build: Build) -> list[str]:
        """The Parquet files of ``sample_id`` + ``adds``: by default one ``<unit>.parquet`` per unit."""
        return build.layout.stage_files(self.name, self.units(build))

    def rules(self, build: Build) -> list[Rule]:
        """Drop rules over the columns this stage adds (the judge applies them in precedence order)."""
        return []

    def plan(self, build: Build) -> list[str]:
        return []

    def decides(self, build: Build, unit: str) -> Any:
        """Inputs and settings that change what ``run`` writes for ``unit`` (fingerprinted into its marker)."""
        return None

    def provenance(self, build: Build, unit: str) -> dict[str, Any]:
        """What the marker records besides the stats: config, inputs."""
        return {}

    def run(self, build: Build, unit: str, out: Path) -> dict[str, Any]:
        raise NotImplementedError(f"stage {self.name} has no per-unit work")

    def reduce(self, build: Build, out: Path) -> dict[str, Any]:
        """The global step after every unit (optional): writes into ``out`` like ``run``, returns stats."""
        raise NotImplementedError(f"stage {self.name} has no global step")

    def reduce_decides(self, build: Build) -> Any:
        """Inputs and settings that change what ``reduce`` writes."""
        return None

    def reduce_dest(self, build: Build) -> str:
        """Where ``reduce``'s files go (default: the stage folder)."""
        return self.dir(build)

    @property
    def has_reduce(self) -> bool:
        return type(self).reduce is not Stage.reduce

    def dir(self, build: Build) -> str:
        return build.layout.stage_dir(self.name)

    def __repr__(self) -> str:
        return f"<stage {self.name}>"


def fingerprint(obj: Any) -> str:
    """A short stable hash of JSON-able inputs/settings that decide an output."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def marker_path(stage_dir: str, name: str) -> str:
    return join(stage_dir, f"{name}{MARKER_SUFFIX}")


def read_marker(stage_dir: str, name: str) -> dict[str, Any] | None:
    path = marker_path(stage_dir, name)
    fs, remote = url_to_fs(path)
    return read_json(path) if fs.exists(remote) else None


def done_units(stage_dir: str) -> list[str]:
    """Units (not global steps) with a marker, sorted."""
    names = (n.removesuffix(MARKER_SUFFIX) for n in listdir_names(stage_dir, MARKER_SUFFIX))
    return [n for n in names if not n.startswith("_")]


def unit_fingerprints(stage_dir: str, names: list[str]) -> dict[str, str | None]:
    """The recorded fingerprint of each named unit or step (None when unfinished): a downstream step's input."""
    return {name: (read_marker(stage_dir, name) or {}).get("fingerprint") for name in names}


def planned_units(stage_dir: str) -> list[str]:
    """The units a stage's ``_plan`` step recorded (empty when it has not run)."""
    record = read_marker(stage_dir, "_plan")
    return list(record["stats"]["units"]) if record else []


def run_unit(stage: Stage, build: Build, unit: str) -> dict[str, Any]:
    """Run one unit of ``stage`` unless it is done; return its marker record."""
    return run_step(
        stage.dir(build),
        unit,
        lambda out: stage.run(build, unit, out),
        decides=stage.decides(build, unit),
        provenance={"stage": stage.name, **stage.provenance(build, unit)},
        on_change=stage.on_change,
    )


def run_reduce(stage: Stage, build: Build) -> dict[str, Any] | None:
    """Run the stage's global step (marker ``<stage>/_reduce.done.json``); None when it has none or is off."""
    if not stage.has_reduce or not stage.enabled(build):
        return None
    return run_step(
        stage.dir(build),
        "_reduce",
        lambda out: stage.reduce(build, out),
        decides=stage.reduce_decides(build),
        provenance={"stage": stage.name, "step": "reduce"},
        dest_dir=stage.reduce_dest(build),
        on_change=stage.on_change,
    )


def run_step(
    stage_dir: str,
    name: str,
    work: Callable[[Path], dict[str, Any]],
    decides: Any = None,
    provenance: dict[str, Any] | None = None,
    dest_dir: str | None = None,
    on_change: str = "refuse",
) -> dict[str, Any]:
    """Run ``work`` once for ``name`` (a unit, or ``_<step>`` for a global step); return the marker record.

    ``work(out)`` writes its files into the local folder ``out`` and returns stats; they are moved into
    ``dest_dir`` (default: the stage folder) and then the marker is written. ``decides`` is fingerprinted into
    the marker: finished work with another fingerprint raises :class:`StageMismatch` (``on_change="refuse"``)
    or is redone (``"redo"``), so a changed recipe never silently reuses old outputs.
    """
    expected = fingerprint(decides)
    record = read_marker(stage_dir, name)
    if record is not None:
        if record.get("fingerprint", expected) == expected:
            return record
        if on_change != "redo":
            raise StageMismatch(
                f"{marker_path(stage_dir, name)}: made from other inputs or settings than this run's "
                f"({record.get('fingerprint')} != {expected}); build into a new output_dir, or delete "
                f"{stage_dir} to redo the stage"
            )
        fs, remote = url_to_fs(marker_path(stage_dir, name))
        fs.rm_file(remote)
    started = time.time()
    with _scratch(stage_dir, name) as out:
        stats = work(out)
        publish_files(out, dest_dir or stage_dir)
    record = {
        "unit": name,
        "fingerprint": expected,
        "stats": stats,
        "seconds": round(time.time() - started, 3),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "code_version": code_version(),
        "provenance": provenance or {},
    }
    write_json(marker_path(stage_dir, name), record)
    return record


@contextlib.contextmanager
def _scratch(stage_dir: str, name: str):
    """A fresh local folder for one attempt; beside the outputs on a local disk, so moving them is a rename.

    Locally it is ``<stage>/_tmp/<name>/<random>``: each unit has a folder of its own, so clearing the leftovers of
    a killed attempt at ``inat`` can never touch the folder of ``inat-2023`` running beside it.
    """
    check_safe_name(name, f"{stage_dir} unit")
    if not is_local(stage_dir):
        tmp = Path(tempfile.mkdtemp(prefix=f"plantmix-{name}-"))
        try:
            yield tmp
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return
    parent = Path(stage_dir) / "_tmp"
    unit_dir = parent / name
    if unit_dir.is_dir():
        for stale in unit_dir.iterdir():  # leftovers of a killed attempt at this unit, and only this unit
            shutil.rmtree(stale, ignore_errors=True)
    tmp = _fresh_dir(unit_dir / uuid.uuid4().hex)
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        for folder in (unit_dir, parent):  # only succeeds once no other attempt is in flight there
            with contextlib.suppress(OSError):
                folder.rmdir()


def _fresh_dir(path: Path, tries: int = 5) -> Path:
    """Make ``path`` and its parents; another attempt finishing may remove an emptied parent in between."""
    for _ in range(tries - 1):
        try:
            path.mkdir(parents=True)
            return path
        except FileNotFoundError:
            continue
    path.mkdir(parents=True)
    return path


def stage_report(stage: Stage, build: Build) -> dict[str, Any]:
    """Counts over a stage's finished units: units, rows and rows per status (what its artifact shows)."""
    stage_dir = stage.dir(build)
    units = done_units(stage_dir)
    rows, status = 0, {}
    for unit in units:
        stats = (read_marker(stage_dir, unit) or {}).get("stats") or {}
        rows += int(stats.get("rows") or 0)
        for key, n in (stats.get("status") or {}).items():
            status[key] = status.get(key, 0) + n
    return {"stage": stage.name, "units": len(units), "rows": rows, "status": dict(sorted(status.items()))}
