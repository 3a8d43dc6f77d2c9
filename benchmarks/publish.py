"""Benchmark: sample + publish (the release) against a bare tar copy of the same bytes; sampling alone at 13M rows.

A synthetic judged build (``--rows``, default 200k candidates) with small images: download tars in img2dataset's
layout (``download/00000.tar`` ..., 10k samples each, members ``<key>.jpg``, ``<key>.json``, ``<key>.txt``) whose
JPEGs are a handful of tiny PIL images made distinct by a JPEG comment segment (the key and 0-1 KB of padding:
~0.3-2 KB each), and ``manifest.parquet`` at the root in ``MANIFEST_SCHEMA`` (written in chunks): 75% plant rows
over a Zipf-distributed species list (exponent 1, ``rows // 10`` species), 25% general rows from two pools, five
CC licenses (5% no-derivatives, excluded by the default policy), status ok, ~90% kept.

Ours: ``SampleStage`` (total = 80% of the kept rows, general_share 0.25, ``max_per_species = rows // 50``, the
general domain stratified by source) and ``PublishStage`` (shard_size 10k) through the harness, as
``pipeline.runner.run_stage`` runs them; timed per step: sample, publish plan (tar index + packlist), publish
units (the release shards), publish reduce (release folder, manifest, card with plots, attribution).
Baseline, in the same process: a bare tar copy -- every member of the download tars read with ``tarfile`` and
written into new tars of 10k samples, until it has copied as many samples as the release holds.
Checks: the release holds exactly the target count; random released images equal their download bytes.

Then, on its own: the sampler on ``--sample-rows`` (default 13M) synthetic ids, a minimal manifest (the columns
the sampler reads + keep) written by DuckDB; timed: the selection (``rank_kept_rows`` + ``decide``) and the whole
``SampleStage`` reduce (which also rewrites the manifest). Targets: ratio >= 0.8, selection at 13M <= 30 s.

    python benchmarks/publish.py                                   # 200k rows + 13M sampling (a few minutes)
    python benchmarks/publish.py --rows 20000 --sample-rows 1000000  # a quick check
Last line: RESULT publish ratio=<bare s / ours s> samples_per_s=... sample_13m_s=... rows=...
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import resource
import shutil
import tarfile
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.core import duck, schema
from pipeline.core.config import DomainSampling, PublishConfig, Recipe, SampleConfig, SourceSpec
from pipeline.core.duck import literal
from pipeline.core.harness import Build, run_reduce, run_unit
from pipeline.stages.publish import PublishStage
from pipeline.stages.sample import SampleStage
from pipeline.stages.sample.select import decide, rank_kept_rows

SHARD_SIZE = 10_000  # samples per download tar and per release shard
CHUNK_SHARDS = 5  # download tars per manifest chunk (bounded memory while generating)
PLANT_SHARE = 0.75
KEEP = 0.9
TOTAL_OF_KEPT = 0.8
GENERAL_SHARE = 0.25
LICENSES = (("cc-by-4.0", 0.4), ("cc0-1.0", 0.2), ("cc-by-nc-4.0", 0.2), ("cc-by-sa-4.0", 0.15), ("cc-by-nd-4.0", 0.05))
PLANT_SOURCES = ("inaturalist", "plantnet", "gbif")
GENERAL_SOURCES = ("pool_a", "pool_b")
DROP_REASONS = ("exact_duplicate", "image_duplicate", "clip_top_fraction", "min_image_side")
WORDS = np.array("a the photo of red green small large old plant tree flower leaf garden city street sky view".split())
TAR_MTIME = 1_700_000_000.25  # img2dataset's TarWriter stamps time.time(): a float, so tarfile adds a pax header


# ---- measurement ---------------------------------------------------------------------------------------------------


class Meter:
    """Named steps, each with its wall seconds, CPU seconds and the peak RSS seen during it (sampled every 10 ms)."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = self.process.memory_info().rss
        self.steps: dict[str, dict[str, float]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.process.memory_info().rss)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        self.peak = self.process.memory_info().rss
        start, cpu = time.perf_counter(), time.process_time()
        try:
            yield
        finally:
            self.peak = max(self.peak, self.process.memory_info().rss)
            self.steps[name] = {
                "seconds": time.perf_counter() - start,
                "cpu_seconds": time.process_time() - cpu,
                "peak_mb": self.peak / 2**20,
            }
            print(f"  {name}: {self.steps[name]['seconds']:.2f} s (cpu {self.steps[name]['cpu_seconds']:.2f} s), "
                  f"peak RSS {self.steps[name]['peak_mb']:.0f} MB", flush=True)  # fmt: skip

    def seconds(self, *names: str) -> float:
        return sum(self.steps[n]["seconds"] for n in names)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


# ---- the synthetic build -------------------------------------------------------------------------------------------


def base_jpegs(seed: int = 0) -> list[tuple[bytes, int, int]]:
    """A handful of tiny JPEGs (noise, 12-40 px: ~0.3-1.2 KB), encoded once: (bytes, width, height)."""
    rng = np.random.default_rng(seed)
    out = []
    for side in (12, 16, 20, 24, 28, 32, 36, 40):
        pixels = rng.integers(0, 256, (side, side + 4, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=60)
        out.append((buffer.getvalue(), side + 4, side))
    return out


def with_comment(jpeg: bytes, payload: bytes) -> bytes:
    """The JPEG with a COM segment right after SOI: other bytes, same pixels."""
    return jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def _hex_ids(rng: np.random.Generator, n: int) -> list[str]:
    return np.frombuffer(rng.bytes(16 * n).hex().encode(), dtype="S32").astype(str).tolist()


def _tar_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """A member as webdataset's TarWriter (img2dataset's writer) adds it: pax format, float mtime, mode 0444."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), TAR_MTIME, 0o444, "bigdata", "bigdata"
    tar.addfile(info, io.BytesIO(data))


def make_build(root: Path, rows: int, seed: int = 0) -> dict[str, Any]:
    """Download tars + judged manifest for ``rows`` candidates; returns counts (kept rows, bytes on disk)."""
    rng = np.random.default_rng(seed)
    jpegs = base_jpegs(seed)
    padding = rng.bytes(1 << 16)
    n_species = max(100, rows // 10)
    genera = [f"Genus{g:04d}" for g in range(n_species // 8 + 1)]
    species_names = np.array([f"{genera[i // 8]} epithet{i:05d}" for i in range(n_species)], dtype=object)
    zipf = 1.0 / np.arange(1, n_species + 1)
    zipf /= zipf.sum()
    (root / "download").mkdir(parents=True)
    shards = -(-rows // SHARD_SIZE)
    kept = tar_bytes = 0
    with pq.ParquetWriter(root / "manifest.parquet", schema.MANIFEST_SCHEMA, compression="zstd") as writer:
        for first_shard in range(0, shards, CHUNK_SHARDS):
            table = pa.concat_tables(
                [
                    _shard(root, s, min(SHARD_SIZE, rows - s * SHARD_SIZE), rng, jpegs, padding, species_names, zipf)
                    for s in range(first_shard, min(first_shard + CHUNK_SHARDS, shards))
                ]
            )
            writer.write_table(table)
            kept += int(np.sum(table["keep"].to_numpy(zero_copy_only=False)))
    for tar in (root / "download").glob("*.tar"):
        tar_bytes += tar.stat().st_size
    return {"rows": rows, "kept": kept, "download_tars": shards, "tar_bytes": tar_bytes, "species": n_species}


def _shard(
    root: Path, shard: int, n: int, rng: np.random.Generator, jpegs: list, padding: bytes, names: np.ndarray,
    zipf: np.ndarray,
) -> pa.Table:  # fmt: skip
    """One download tar and its manifest rows (column-wise; one Python loop over the shard's samples for the tar)."""
    plant = rng.random(n) < PLANT_SHARE
    keep = rng.random(n) < KEEP
    which = rng.integers(0, len(jpegs), n)
    pad = rng.integers(0, 1024, n)
    pad_at = rng.integers(0, len(padding) - 1024, n)
    keys = [f"{shard:05d}{i:04d}" for i in range(n)]
    ids = _hex_ids(rng, n)
    species = np.where(plant, names[rng.choice(len(names), n, p=zipf)], None)
    source = np.where(
        plant, np.array(PLANT_SOURCES)[rng.integers(0, 3, n)], np.array(GENERAL_SOURCES)[rng.integers(0, 2, n)]
    )
    codes = [c for c, _ in LICENSES]
    license_ = np.array(codes, dtype=object)[rng.choice(len(codes), n, p=[p for _, p in LICENSES])]
    words = WORDS[rng.integers(0, len(WORDS), (n, 5))]
    original = [" ".join(w) for w in words.tolist()]
    captions = [
        f"{s}, commonly known as plant {k}." if s else o for s, k, o in zip(species, keys, original, strict=True)
    ]
    holders = [f"photographer {i % 997}" for i in range(n)]
    urls = [f"https://img.example.org/{shard}/{k}.jpg" for k in keys]
    sha, width, height = [], [], []
    tar_name = f"download/{shard:05d}.tar"
    with tarfile.open(root / tar_name, "w", format=tarfile.PAX_FORMAT) as tar:
        for i in range(n):
            base, w, h = jpegs[which[i]]
            image = with_comment(base, keys[i].encode() + padding[pad_at[i] : pad_at[i] + pad[i]])
            meta = {"url": urls[i], "key": keys[i], "status": "success", "error_message": None, "width": w,
                    "height": h, "original_width": w * 8, "original_height": h * 8, "sample_id": ids[i],
                    "license": license_[i], "rights_holder": holders[i]}  # fmt: skip
            _tar_member(tar, f"{keys[i]}.jpg", image)
            _tar_member(tar, f"{keys[i]}.json", json.dumps(meta).encode())
            _tar_member(tar, f"{keys[i]}.txt", captions[i].encode())
            sha.append(hashlib.sha256(image).hexdigest())
            width.append(w)
            height.append(h)
    domain = np.where(plant, "plant", "general")
    drop = np.array(DROP_REASONS, dtype=object)[rng.integers(0, len(DROP_REASONS), n)]
    variants = pa.MapArray.from_arrays(
        pa.array(np.arange(0, 2 * n + 1, 2, dtype=np.int32)),
        pa.array(["dalip", "original"] * n),
        pa.array([v for pair in zip(captions, original, strict=True) for v in pair]),
    )
    columns = {
        "sample_id": ids,
        "source": source.tolist(),
        "source_record_id": keys,
        "domain": domain.tolist(),
        "url": urls,
        "page_url": [f"https://example.org/photos/{k}" for k in keys],
        "caption": captions,
        "caption_kind": np.where(plant, "dalip", "original").tolist(),
        "caption_variants": variants,
        "original_text": original,
        "scientific_name": species.tolist(),
        "common_name": [f"plant {k}" if s else None for s, k in zip(species, keys, strict=True)],
        "taxon_rank": np.where(plant, "species", None).tolist(),
        "license": license_.tolist(),
        "license_url": [f"https://creativecommons.org/licenses/{c}/" for c in license_],
        "rights_holder": holders,
        "attribution": [f"(c) {h}, some rights reserved ({c})" for h, c in zip(holders, license_, strict=True)],
        "status": ["ok"] * n,
        "input_file": [f"exports/{s}.tsv" for s in source],
        "input_row": np.arange(shard * SHARD_SIZE + 1, shard * SHARD_SIZE + n + 1),
        "image_sha256": sha,
        "width": np.array(width, np.int32),
        "height": np.array(height, np.int32),
        "original_width": np.array(width, np.int32) * 8,
        "original_height": np.array(height, np.int32) * 8,
        "shard": [tar_name] * n,
        "key": keys,
        "clip_model": ["synthetic"] * n,
        "clip_score": rng.normal(0.3, 0.05, n).astype(np.float32),
        "keep": keep,
        "drop_reason": np.where(keep, None, drop).tolist(),
    }
    arrays = [
        pa.array(columns[f.name], f.type) if f.name in columns else pa.nulls(n, f.type) for f in schema.MANIFEST_SCHEMA
    ]
    return pa.Table.from_arrays(arrays, schema=schema.MANIFEST_SCHEMA)


def make_recipe(root: Path, rows: int, total: int) -> Recipe:
    return Recipe(
        name="publish-bench",
        output_dir=str(root),
        sources=[SourceSpec("pool_a", "url_caption_pool")],
        sample=SampleConfig(
            total=total,
            general_share=GENERAL_SHARE,
            plant=DomainSampling(stratify_by="species", max_per_species=max(1, rows // 50)),
            general=DomainSampling(stratify_by="source"),
        ),
        publish=PublishConfig(shard_size=SHARD_SIZE),
    )


# ---- ours and the baseline -----------------------------------------------------------------------------------------


def run_ours(build: Build, meter: Meter) -> dict[str, Any]:
    """Sample, then publish (plan, units, reduce) as ``pipeline.runner.run_stage`` runs them, each step timed."""
    sample, publish = SampleStage(), PublishStage()
    with meter.step("sample"):
        sampled = run_reduce(sample, build)
    with meter.step("publish plan"):
        units = publish.plan(build)
    with meter.step("publish units"):
        for unit in units:
            run_unit(publish, build, unit)
    with meter.step("publish reduce"):
        released = run_reduce(publish, build)
    return {"sample": sampled["stats"], "release": released["stats"], "units": len(units)}


def bare_copy(root: Path, dest: Path, samples: int) -> int:
    """Read the download tars' members with tarfile and write them into new tars of SHARD_SIZE samples."""
    dest.mkdir(parents=True)
    copied = 0
    out: tarfile.TarFile | None = None
    for source in sorted((root / "download").glob("*.tar")):
        with tarfile.open(source, "r:") as tar:
            for member in tar:
                if member.name.endswith(".jpg"):
                    if copied == samples:
                        break
                    if copied % SHARD_SIZE == 0:
                        if out is not None:
                            out.close()
                        out = tarfile.open(dest / f"{copied // SHARD_SIZE:05d}.tar", "w", format=tarfile.USTAR_FORMAT)
                    copied += 1
                out.addfile(member, tar.extractfile(member))
                tar.members.clear()
        if copied == samples:
            break
    if out is not None:
        out.close()
    return copied


def check_release(root: Path, target: int, shards: int = 2, direct: int = 3, seed: int = 0) -> None:
    """The release holds exactly ``target`` samples; every image of ``shards`` random release shards has its
    download's sha256 (computed from the bytes written into the download tar), and ``direct`` of them equal the
    download tar member read with tarfile."""
    release = root / "release"
    sizes = json.loads((release / "sizes.json").read_text())
    released = pq.read_table(release / "manifest.parquet", columns=["sample_id", "shard", "key"])
    if sum(sizes.values()) != target or released.num_rows != target:
        raise SystemExit(f"release holds {sum(sizes.values())} samples ({released.num_rows} rows), expected {target}")
    build = pq.read_table(root / "manifest.parquet", columns=["sample_id", "shard", "key", "image_sha256"])
    where = {i: (s, k, h) for i, s, k, h in zip(*(build[c].to_pylist() for c in build.column_names), strict=True)}
    sample_of = {(r["shard"], r["key"]): r["sample_id"] for r in released.to_pylist()}
    rng = random.Random(seed)
    checked, direct_checks = 0, []
    for shard in rng.sample(sorted(sizes), min(shards, len(sizes))):
        with tarfile.open(release / "shards" / shard) as tar:
            for member in tar:
                key, _, ext = member.name.partition(".")
                if ext == "jpg":
                    sample_id = sample_of[(f"shards/{shard}", key)]
                    data = tar.extractfile(member).read()
                    if hashlib.sha256(data).hexdigest() != where[sample_id][2]:
                        raise SystemExit(f"{shard}:{member.name}: not the bytes downloaded for {sample_id}")
                    checked += 1
                    if len(direct_checks) < direct and rng.random() < 0.01:
                        direct_checks.append((where[sample_id], data))
    for (tar_name, key, _), data in direct_checks:
        with tarfile.open(root / tar_name) as tar:
            if tar.extractfile(f"{key}.jpg").read() != data:
                raise SystemExit(f"{tar_name}:{key}.jpg: released bytes differ")
    print(f"  checks: {target} samples released as targeted; {checked} images of {shards} random release shards "
          f"have their download's sha256, {len(direct_checks)} byte-equal to the download tar member")  # fmt: skip


# ---- sampling alone at 13M -----------------------------------------------------------------------------------------


def minimal_manifest(root: Path, rows: int) -> int:
    """``rows`` ids with the columns the sampler reads + keep (Zipf-like species: log-uniform ranks), every other
    manifest column NULL (so the whole stage can rewrite the file), written by DuckDB; returns the kept rows."""
    root.mkdir(parents=True, exist_ok=True)
    n_species = max(100, rows // 10)
    u, v, w = (f"((hash(i, {k}) % 1000003) / 1000003.0)" for k in (1, 2, 3))  # deterministic uniforms per row
    licenses = [code for code, p in LICENSES for _ in range(round(p * 20))]  # 20 slots in the LICENSES shares
    plant = f"{u} < {PLANT_SHARE}"
    read = {
        "sample_id": "md5(i::VARCHAR)",
        "source": f"CASE WHEN {plant} THEN {list(PLANT_SOURCES)}[1 + i % 3] "
        f"ELSE {list(GENERAL_SOURCES)}[1 + i % 2] END",
        "domain": f"CASE WHEN {plant} THEN 'plant' ELSE 'general' END",
        "scientific_name": f"CASE WHEN {plant} THEN 'Species ' || "
        f"CAST(floor(exp({v} * ln({n_species}))) AS BIGINT) END",
        "license": f"{licenses}[1 + CAST(floor({w} * {len(licenses)}) AS BIGINT) % {len(licenses)}]",
        "status": "'ok'",
        "keep": f"hash(i, 4) % 10 < {round(KEEP * 10)}",
    }
    columns = ", ".join(
        f"({read.get(f.name, 'NULL')})::{_duck_type(f.type)} AS {f.name}" for f in schema.MANIFEST_SCHEMA
    )
    con = duck.connect()
    con.execute(
        f"COPY (SELECT {columns} FROM range({rows}) t(i)) TO {literal(root / 'manifest.parquet')} "
        "(FORMAT parquet, COMPRESSION zstd)"
    )
    return con.sql(f"SELECT count(*) FILTER (keep) FROM {literal(root / 'manifest.parquet')}").fetchall()[0][0]


def _duck_type(t: pa.DataType) -> str:
    if pa.types.is_map(t):
        return f"MAP({_duck_type(t.key_type)}, {_duck_type(t.item_type)})"
    if pa.types.is_struct(t):
        return "STRUCT(" + ", ".join(f'"{f.name}" {_duck_type(f.type)}' for f in t) + ")"
    names = {pa.string(): "VARCHAR", pa.int64(): "BIGINT", pa.int32(): "INTEGER", pa.float32(): "FLOAT",
             pa.bool_(): "BOOLEAN"}  # fmt: skip
    return names[t]


def sample_at_scale(root: Path, rows: int, meter: Meter) -> dict[str, Any]:
    with meter.step(f"write {rows} minimal rows"):
        kept = minimal_manifest(root, rows)
    recipe = make_recipe(root, rows, round(TOTAL_OF_KEPT * kept))
    build = Build.of(recipe)
    config = recipe.sample
    con = duck.connect(recipe.duckdb, build.layout.root)
    with meter.step("selection (rank_kept_rows + decide)"):
        with meter.step("  rank_kept_rows"):
            rank_kept_rows(con, build.layout.manifest, config)
        with meter.step("  decide"):
            decide(con, build.layout.manifest, config.targets(), config, recipe.publish.shard_size)
    selected = con.sql("SELECT count(*) FROM selection").fetchall()[0][0]
    con.close()
    with meter.step("sample reduce (whole stage)"):
        stats = run_reduce(SampleStage(), build)["stats"]
    if selected != config.total or stats["copies"] != config.total:
        raise SystemExit(f"sampling at {rows}: {selected} / {stats['copies']} selected, expected {config.total}")
    return {"kept": kept, "total": config.total}


# ---- main ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=200_000, help="candidates of the synthetic build")
    parser.add_argument("--sample-rows", type=int, default=13_000_000, help="ids for the sampling-only run (0: skip)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="plantmix-publish-"))
    meter = Meter()
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; work folder {work}", flush=True)
    try:
        root = work / "build"
        start = time.perf_counter()
        made = make_build(root, args.rows, args.seed)
        total = round(TOTAL_OF_KEPT * made["kept"])
        print(f"generated {made['rows']} rows ({made['kept']} kept, {made['species']} species), "
              f"{made['download_tars']} download tars ({made['tar_bytes'] / 2**20:.0f} MiB) in "
              f"{time.perf_counter() - start:.1f} s; target {total} samples", flush=True)  # fmt: skip

        build = Build.of(make_recipe(root, args.rows, total))
        print("ours:", flush=True)
        ours = run_ours(build, meter)
        ours_s = meter.seconds("sample", "publish plan", "publish units", "publish reduce")
        released = int(ours["release"]["packed"])
        release_bytes = sum(p.stat().st_size for p in (root / "release" / "shards").glob("*.tar"))
        print(f"  {released} samples in {ours['units']} shards ({release_bytes / 2**20:.0f} MiB) in {ours_s:.1f} s "
              f"= {released / ours_s:.0f} samples/s", flush=True)  # fmt: skip
        check_release(root, total)

        print("bare tar copy:", flush=True)
        with meter.step("bare copy"):
            copied = bare_copy(root, work / "bare", released)
        bare_s = meter.seconds("bare copy")
        print(f"  {copied} samples in {bare_s:.1f} s = {copied / bare_s:.0f} samples/s", flush=True)
        shutil.rmtree(work / "bare")
        shutil.rmtree(root)

        sample_s = float("nan")
        if args.sample_rows:
            print(f"sampling alone, {args.sample_rows} rows:", flush=True)
            scale = sample_at_scale(work / "scale", args.sample_rows, meter)
            sample_s = meter.seconds("selection (rank_kept_rows + decide)")
            print(f"  {scale['kept']} kept rows, {scale['total']} selected", flush=True)
    finally:
        meter.close()
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of the process {peak:.0f} MB; load average {os.getloadavg()[0]:.2f}")
    print(
        f"RESULT publish ratio={bare_s / ours_s:.2f} samples_per_s={released / ours_s:.0f} "
        f"sample_13m_s={sample_s:.1f} rows={args.rows}"
    )


if __name__ == "__main__":
    main()
