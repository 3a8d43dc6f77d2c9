"""Judge stage: one global step that merges every stage's output into the manifest and applies the rules.

Writes ``manifest.parquet`` (one row per candidate, ``keep`` and the first failed rule as ``drop_reason``),
``summary.json`` and ``build.json`` at the root of the build. All three are written into the step's scratch folder
first and published together (each fsynced, then renamed into place) only once the merge, its checks and the
summary have succeeded: a failure leaves the previous three as they were, never an old summary beside a new
manifest. It is cheap and deterministic, so a changed recipe (other filter rules, say) redoes it instead of
refusing.
"""

from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.core import duck
from pipeline.core.config import recipe_to_dict
from pipeline.core.harness import Build, Stage, fingerprint, planned_units, read_marker, unit_fingerprints
from pipeline.core.io import write_json
from pipeline.core.layout import MANIFEST_FILE
from pipeline.core.version import code_version
from pipeline.query.summary import summarize
from pipeline.stages.judge.merge import (
    GroupedMerge,
    ManifestError,
    MergeInputs,
    StageColumns,
    shards_per_group,
    write_manifest,
)
from pipeline.stages.judge.rules import rules_for, top_fraction_thresholds

# One group's scored rows (``merged`` is a group's view); the merge gathers them over the whole build.
SCORED_BY_DOMAIN = "SELECT domain, clip_score FROM merged WHERE clip_score IS NOT NULL"


class JudgeStage(Stage):
    """Joins the crawl, the download and every upstream stage that ``adds`` columns; applies all rules."""

    name = "judge"
    on_change = "redo"

    def __init__(self, upstream: tuple[Stage, ...] = ()) -> None:
        self.upstream = upstream  # the stages before the judge, in build order

    def reduce_dest(self, build: Build) -> str:
        return build.layout.root

    def _contributing(self, build: Build) -> list[Stage]:
        return [s for s in self.upstream if s.adds and s.name != "download" and s.enabled(build)]

    def reduce_decides(self, build: Build) -> Any:
        recipe, layout = build.recipe, build.layout
        shards = planned_units(layout.stage_dir("download"))
        upstream = {
            stage.name: fingerprint(unit_fingerprints(stage.dir(build), ["_reduce", *stage.units(build)]))
            for stage in self._contributing(build)
        }
        return {
            "filter": dataclasses.asdict(recipe.filter),
            "crawl": unit_fingerprints(layout.stage_dir("crawl"), [s.name for s in recipe.sources]),
            "download": fingerprint(unit_fingerprints(layout.stage_dir("download"), ["_plan", *shards])),
            **upstream,
        }

    def reduce(self, build: Build, out: Path) -> dict[str, Any]:
        recipe, layout = build.recipe, build.layout
        shards = planned_units(layout.stage_dir("download"))
        _require_done(layout.stage_dir("download"), shards)
        contributions = []
        for stage in self._contributing(build):
            _require_done(stage.dir(build), stage.units(build) + (["_reduce"] if stage.has_reduce else []))
            contributions.append(StageColumns(stage.name, stage.output_files(build), stage.adds))
        con = duck.connect(recipe.duckdb, layout.root)
        crawl = [layout.crawl_file(s.name) for s in recipe.sources]
        plans = [layout.plan_file(shard) for shard in shards]
        inputs = MergeInputs(crawl, shards, plans, layout.stage_files("download", shards), contributions)
        with tempfile.TemporaryDirectory(prefix="_merge-", dir=out) as scratch:  # removed before publishing
            merge = GroupedMerge(con, inputs, Path(scratch), shards_per_group(recipe.download.shard_size))
            thresholds = clip_thresholds(build, merge)
            rules = rules_for(recipe.filter, thresholds)
            for stage in self._contributing(build):
                rules += stage.rules(build)
            provenance = {"plantmix_code_version": code_version(), "plantmix_build": recipe.name}
            manifest = write_manifest(merge, rules, out / MANIFEST_FILE, provenance)
        summary = summarize(manifest, recipe.duckdb)
        dedup = {stage.name: _dedup_counts(stage, build) for stage in self._contributing(build)
                 if stage.name.startswith(("dedup_", "decontaminate"))}  # fmt: skip
        if dedup:
            summary["dedup"] = dedup
        if recipe.embed is not None:
            summary["clip_model"] = recipe.embed.model_id
            summary["clip_top_fraction_thresholds"] = thresholds
        write_json(out / "summary.json", summary)
        record = {"recipe": recipe_to_dict(recipe), "code_version": code_version(), "finished_at": time.time()}
        write_json(out / "build.json", record)
        return summary


def clip_thresholds(build: Build, merge: GroupedMerge) -> dict[str, float]:
    """Top-fraction CLIP thresholds over the whole build's scores, gathered group by group."""
    fractions = build.recipe.filter.clip_top_fraction
    if not fractions:
        return {}
    return top_fraction_thresholds(merge.con, merge.gather(SCORED_BY_DOMAIN, "scores"), fractions)


def _dedup_counts(stage: Stage, build: Build) -> dict[str, Any]:
    """What a dedup stage counted: its global step's numbers, or its units' summed (decontamination)."""
    reduced = (read_marker(stage.dir(build), "_reduce") or {}).get("stats") or {}
    counts = {k: v for k, v in reduced.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    for unit in stage.units(build) if not reduced else []:
        stats = (read_marker(stage.dir(build), unit) or {}).get("stats") or {}
        for key, value in stats.items():
            if isinstance(value, int):
                counts[key] = counts.get(key, 0) + value
    return counts


def _require_done(stage_dir: str, units: list[str]) -> None:
    missing = [u for u in unit_fingerprints(stage_dir, units).items() if u[1] is None]
    if missing:
        names = ", ".join(name for name, _ in missing[:5])
        raise ManifestError(f"{stage_dir}: {len(missing)} unit(s) not finished ({names}); run that stage first")
