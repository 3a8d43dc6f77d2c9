"""Publish stage: the sample stage's selection -> the release folder a trainer reads.

- plan (``_plan``): index the download tars that hold selected images and write the packlist
  (:mod:`.packlist`); units are the release shards ``00000``, ``00001``, ...;
- one unit per release shard: ``publish/NNNNN.tar`` (:mod:`.shard_writer`, bytes copied, not re-encoded) and
  ``publish/NNNNN.parquet``, that shard's rows of the release manifest;
- reduce: ``<output_dir>/release/`` (:mod:`.release`): ``shards/`` (with a copy of ``sizes.json``: open_clip's
  trainer reads it beside the tars), ``sizes.json``, ``manifest.parquet``,
  ``release.json``, ``RELEASE.md`` + ``plots/`` (:mod:`.card`), ``ATTRIBUTION.md`` + ``.csv``
  (:mod:`.attribution`).

Shards and manifest are byte-identical across reruns of the same selection. A kill at any point leaves finished
shards marked and no half-written release; the rerun packs what is missing and assembles again.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import yaml

from pipeline.core import duck, schema
from pipeline.core.config import recipe_to_dict
from pipeline.core.duck import literal
from pipeline.core.harness import Build, Stage, read_marker, run_step, unit_fingerprints
from pipeline.core.io import exists, is_local, join, read_json, url_to_fs, write_json
from pipeline.core.version import code_version
from pipeline.stages.publish.attribution import write_attribution
from pipeline.stages.publish.card import write_card
from pipeline.stages.publish.packlist import PACKLIST_FILE, URL_ONLY_FILE, write_packlist
from pipeline.stages.publish.release import RELEASE_JSON, concat_parquet, place_file, staged_release
from pipeline.stages.publish.shard_writer import write_shard

SELECTION = ("sample", "selection.parquet")  # the sample stage's output (read through the layout, not imported)


class PublishStage(Stage):
    name = "publish"
    on_change = "redo"  # repacking is deterministic: a new selection redoes the shards instead of refusing

    def enabled(self, build: Build) -> bool:
        return build.recipe.sample is not None

    def plan(self, build: Build) -> list[str]:
        if not self.enabled(build):
            return []
        layout, recipe = build.layout, build.recipe
        sample = read_marker(layout.stage_dir("sample"), "_reduce")
        if sample is None:
            raise RuntimeError(f"{layout.stage_dir('sample')}: the sample stage has not run; run it before publish")
        selection = join(layout.stage_dir(SELECTION[0]), SELECTION[1])

        def plan(out: Path) -> dict[str, Any]:
            con = duck.connect(recipe.duckdb, layout.root)
            return write_packlist(con, layout.root, layout.manifest, selection, recipe.publish.shard_size, out)

        record = run_step(
            self.dir(build),
            "_plan",
            plan,
            decides={"sample": sample["fingerprint"], "shard_size": recipe.publish.shard_size},
            provenance={"stage": self.name, "step": "plan", "selection": selection},
            on_change="redo",
        )
        return record["stats"]["units"]

    def decides(self, build: Build, unit: str) -> Any:
        return {"plan": (read_marker(self.dir(build), "_plan") or {}).get("fingerprint")}

    def run(self, build: Build, unit: str, out: Path) -> dict[str, Any]:
        size = build.recipe.publish.shard_size
        first = int(unit) * size
        packlist = join(self.dir(build), PACKLIST_FILE)
        fs, path = url_to_fs(packlist)
        with fs.open(path, "rb") as f:  # the packlist's row groups are one shard each: only ours is read
            rows = pq.read_table(f, filters=[("position", ">=", first), ("position", "<", first + size)])
        rows = rows.sort_by("position")
        stats = write_shard(rows, build.layout.root, out / f"{unit}.tar")
        part = rows.select(schema.RELEASE_SCHEMA.names).cast(schema.RELEASE_SCHEMA)
        pq.write_table(part, out / f"{unit}.parquet", compression="zstd")
        return stats

    def reduce_decides(self, build: Build) -> Any:
        mix = read_marker(build.layout.stage_dir("mix"), "_reduce") or {}
        return {
            "units": unit_fingerprints(self.dir(build), ["_plan", *self.units(build)]),
            "mixing_law": mix.get("finished_at"),  # a new fit redraws the card
        }

    def reduce(self, build: Build, out: Path) -> dict[str, Any]:
        layout, recipe = build.layout, build.recipe
        units = self.units(build)
        missing = [u for u, f in unit_fingerprints(self.dir(build), units).items() if f is None]
        if missing:
            raise RuntimeError(f"{self.dir(build)}: {len(missing)} release shard(s) not packed ({missing[:5]})")
        sizes = {f"{unit}.tar": int(read_marker(self.dir(build), unit)["stats"]["rows"]) for unit in units}
        con = duck.connect(recipe.duckdb, layout.root)
        with staged_release(layout.release) as staging:
            for unit in units:
                place_file(join(self.dir(build), f"{unit}.tar"), join(staging, "shards", f"{unit}.tar"))
            parts = [join(self.dir(build), f"{unit}.parquet") for unit in units]
            manifest = join(staging, "manifest.parquet")
            rows = concat_parquet([*parts, join(self.dir(build), URL_ONLY_FILE)], manifest)
            write_json(join(staging, "sizes.json"), sizes)
            write_json(join(staging, "shards", "sizes.json"), sizes)  # where open_clip_train looks: beside the tars
            release = release_record(build, con, manifest, units)
            _write_readables(con, layout.manifest, manifest, release, staging)
            write_json(join(staging, RELEASE_JSON), release)  # last: on object stores it marks the release done
        return {"release": layout.release, "rows": rows, "shards": len(units), **release["counts"]}


def release_record(build: Build, con, manifest: str, units: list[str]) -> dict[str, Any]:
    """``release.json``: counts per domain and source, the target and share, the recipe verbatim, provenance."""
    recipe = build.recipe
    released = f"read_parquet({literal(manifest)})"
    by_domain = dict(con.sql(f"SELECT domain, count(*) FROM {released} GROUP BY 1 ORDER BY 1").fetchall())
    by_source = dict(con.sql(f"SELECT source, count(*) FROM {released} GROUP BY 1 ORDER BY 1").fetchall())
    packed, url_only, samples = con.sql(
        f"SELECT count(*) FILTER (keep), count(*) FILTER (NOT keep), count(DISTINCT sample_id) FROM {released}"
    ).fetchall()[0]
    targets = recipe.sample.targets()
    total = sum(targets.values())
    text = recipe_text(recipe)
    return {
        "name": recipe.name,
        "target": {"total": total, **targets},
        "general_share": round(targets["general"] / total, 6) if total else None,
        "seed": recipe.sample.seed,
        "shard_size": recipe.publish.shard_size,
        "counts": {
            "by_domain": by_domain,
            "by_source": by_source,
            "samples": samples,
            "packed": packed,
            "url_only": url_only,
            "shards": len(units),
        },
        "files": {"shards": [f"shards/{u}.tar" for u in units], "manifest": "manifest.parquet", "sizes": "sizes.json"},
        "recipe": recipe_to_dict(recipe),
        "recipe_yaml": text,
        "recipe_sha256": hashlib.sha256(text.encode()).hexdigest(),
        "code_version": code_version(),
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mixing_law": mixing_law_summary(build),
    }


def mixing_law_summary(build: Build) -> dict[str, Any] | None:
    """What the card shows of the mix stage's fit: the plot, the chosen share and whether the sample used it."""
    layout = build.layout
    if not exists(layout.mixing_law):
        return None
    result = read_json(layout.mixing_law)
    return {
        "plot": layout.mixing_law_plot,
        "share": result.get("share"),
        "used_by_sample": build.recipe.sample.share_from_mixing_law,
        "rule": result.get("rule"),
        "reference": result.get("reference"),
        "reliable": result.get("reliable"),
        "problems": result.get("problems"),
        "fit": {d: {k: f.get(k) for k in ("c", "k", "b", "rmse", "loo_rmse")} for d, f in result["fit"].items()},
    }


def recipe_text(recipe) -> str:
    """The recipe as its file has it (verbatim), or as YAML when it was built in code."""
    if recipe.path and Path(recipe.path).is_file():
        return Path(recipe.path).read_text()
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def _write_readables(con, build_manifest: str, release_manifest: str, release: dict, staging: str) -> None:
    """The card (RELEASE.md, plots/) and the attribution files, made in a local folder and put into the release."""
    with tempfile.TemporaryDirectory(prefix="plantmix-card-") as tmp:
        local = Path(tmp)
        write_card(con, build_manifest, release_manifest, release, local)
        write_attribution(con, release_manifest, local)
        for path in sorted(p for p in local.rglob("*") if p.is_file()):
            dest = join(staging, str(path.relative_to(local)))
            if is_local(dest):
                Path(dest).parent.mkdir(parents=True, exist_ok=True)
                shutil.move(path, dest)
            else:
                fs, remote = url_to_fs(dest)
                fs.put_file(str(path), remote)
