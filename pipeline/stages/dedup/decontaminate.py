"""Decontamination: drop training rows whose image is an evaluation image (same bytes, or embedding cosine above
the recipe's threshold), recording the benchmark in ``contaminates``.

Evaluation sets are a folder of images (searched recursively) or a glob of webdataset shards per benchmark
name. The ``_plan`` step embeds them once with the recipe's embed model (``decontaminate/eval/<name>.npy`` and
``.parquet`` with each item's path and sha256). Units follow the download shards: each compares its shard's
downloaded rows with every evaluation set, by sha256 (exact copies) and by FAISS inner product over the
stored image embeddings (near copies), and writes ``decontaminate/<shard>.parquet`` with the matches only.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.core import schema
from pipeline.core.harness import Build, Stage, planned_units, read_marker, run_step
from pipeline.core.io import join, open_input, read_parquet, url_to_fs
from pipeline.core.rules import CONTAMINATION, Rule

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
MATCHES_SCHEMA = pa.schema(
    [("sample_id", pa.string()), ("contaminates", pa.string()), ("contaminates_item", pa.string()),
     ("contamination_similarity", pa.float32())]
)  # fmt: skip


class DecontaminationError(ValueError):
    """An evaluation set that cannot be read (missing folder, no images, an undecodable file)."""


class DecontaminateStage(Stage):
    name = "decontaminate"
    follows = "embed"
    adds = ("contaminates",)

    def enabled(self, build: Build) -> bool:
        dedup = build.recipe.dedup
        return dedup is not None and dedup.decontamination is not None and bool(dedup.decontamination.eval_sets)

    def units(self, build: Build) -> list[str]:
        return planned_units(build.layout.stage_dir("download"))  # one per embedded (= downloaded) shard

    def rules(self, build: Build) -> list[Rule]:
        return [Rule("contaminated", "contaminates IS NOT NULL", precedence=CONTAMINATION)]

    def plan(self, build: Build) -> list[str]:
        if not self.enabled(build):
            return []
        config = build.recipe.dedup.decontamination
        run_step(
            self.dir(build),
            "_plan",
            lambda out: embed_eval_sets(build, out),
            decides={"eval_sets": config.eval_sets, "model": build.recipe.embed.model_id},
            provenance={"stage": self.name, "step": "embed evaluation sets", "eval_sets": config.eval_sets},
            dest_dir=join(self.dir(build), "eval"),
        )
        return planned_units(build.layout.stage_dir("download"))

    def decides(self, build: Build, unit: str) -> Any:
        layout = build.layout
        return {
            "threshold": build.recipe.dedup.decontamination.threshold,
            "eval": (read_marker(self.dir(build), "_plan") or {}).get("fingerprint"),
            "embed": (read_marker(layout.stage_dir("embed"), unit) or {}).get("fingerprint"),
        }

    def run(self, build: Build, unit: str, out: Path) -> dict[str, Any]:
        layout, config = build.layout, build.recipe.dedup.decontamination
        rows = read_parquet(layout.unit_file("download", unit), columns=["sample_id", "status", "image_sha256"])
        rows = rows.filter(pc.equal(rows["status"], schema.STATUS_OK))
        embedded = read_parquet(layout.unit_file("embed", unit), columns=["sample_id"])["sample_id"].to_pylist()
        with open_input(layout.embeddings(unit, "image")) as f:
            vectors = np.load(io.BytesIO(f.read())).astype(np.float32)
        matches: dict[str, tuple[str, str, float]] = {}
        for name in sorted(config.eval_sets):
            items = read_parquet(join(self.dir(build), "eval", f"{name}.parquet"))
            by_sha = dict(zip(items["sha256"].to_pylist(), items["path"].to_pylist(), strict=True))
            for sid, sha in zip(rows["sample_id"].to_pylist(), rows["image_sha256"].to_pylist(), strict=True):
                if sha in by_sha and sid not in matches:
                    matches[sid] = (name, by_sha[sha], 1.0)
            with open_input(join(self.dir(build), "eval", f"{name}.npy")) as f:
                eval_vectors = np.load(io.BytesIO(f.read())).astype(np.float32)
            if len(embedded) and len(eval_vectors):
                index = faiss.IndexFlatIP(eval_vectors.shape[1])
                index.add(eval_vectors)
                similarity, nearest = index.search(vectors, 1)
                paths = items["path"].to_pylist()
                for sid, sim, j in zip(embedded, similarity[:, 0], nearest[:, 0], strict=True):
                    if sim >= config.threshold and sid not in matches:
                        matches[sid] = (name, paths[j], float(sim))
        table = pa.table(
            {
                "sample_id": list(matches),
                "contaminates": [m[0] for m in matches.values()],
                "contaminates_item": [m[1] for m in matches.values()],
                "contamination_similarity": [m[2] for m in matches.values()],
            },
            schema=MATCHES_SCHEMA,
        )
        pq.write_table(table, out / f"{unit}.parquet")
        per_set = table.group_by("contaminates").aggregate([("sample_id", "count")]).to_pylist()
        return {"rows": rows.num_rows, "contaminated": table.num_rows,
                "by_benchmark": {r["contaminates"]: r["sample_id_count"] for r in per_set}}  # fmt: skip


def eval_items(location: str) -> list[tuple[str, bytes]]:
    """``(item path, image bytes)`` of one evaluation set: images under a folder, or in webdataset shards."""
    fs, path = url_to_fs(location)
    if fs.isdir(path):
        files = sorted(p for p in fs.find(path) if p.lower().endswith(IMAGE_SUFFIXES))
        items = [(p, fs.cat_file(p)) for p in files]
    else:
        items = []
        for shard in sorted(fs.glob(path)):
            with fs.open(shard, "rb") as f, tarfile.open(fileobj=f, mode="r|") as tar:
                for member in tar:
                    if member.isfile() and member.name.lower().endswith(IMAGE_SUFFIXES):
                        items.append((f"{shard}/{member.name}", tar.extractfile(member).read()))
    if not items:
        raise DecontaminationError(f"evaluation set {location}: no images found (a folder of images or shard glob)")
    return items


def embed_eval_sets(build: Build, out: Path) -> dict[str, Any]:
    """Embed every evaluation set with the recipe's model; write ``<name>.npy`` and ``<name>.parquet``."""
    from pipeline.models.encode import embed_images  # torch + open_clip: only here

    counts = {}
    for name, location in sorted(build.recipe.dedup.decontamination.eval_sets.items()):
        items = eval_items(location)
        try:
            vectors = embed_images(build.recipe.embed, [blob for _, blob in items])
        except OSError as err:  # PIL: not an image
            raise DecontaminationError(
                f"evaluation set {name} ({location}): an image cannot be decoded: {err}"
            ) from err
        np.save(out / f"{name}.npy", vectors.astype(np.float16))
        table = pa.table(
            {"path": [p for p, _ in items], "sha256": [hashlib.sha256(blob).hexdigest() for _, blob in items]}
        )
        pq.write_table(table, out / f"{name}.parquet")
        counts[name] = len(items)
    return {"eval_sets": counts}
