"""Benchmark: the driver at scale -- crawl, plan, merge and judge on synthetic builds of 100k and 1M candidates.

A generated url+caption pool (Parquet: uid, url, caption, license; a few repeated uids, ftp URLs, empty captions
and "all rights reserved" licenses so the repeat and reject paths run) goes through the real stages of
``pipeline.stages.STAGES``, as the flow runs them:

- crawl: ``run_unit(crawl, build, "pool")`` -- the url_caption_pool adapter and the DuckDB repeat check
  (``mark_repeats``, also timed on its own);
- plan: ``download.plan(build)`` -- the download plan, one Parquet file per 10k-row shard;
- merge + judge: ``run_reduce(judge, build)`` -- the groups of download shards (``GroupedMerge``), CLIP-score
  thresholds by SQL window over every group's scores (``clip_thresholds``), the DuckDB merge of every stage's
  Parquet, group by group, streamed to manifest.parquet with its checks (``write_manifest``), and summary.json
  (each step also timed).

Between plan and judge the download and embed outputs are synthesized in the stages' own per-shard formats
(``download/<shard>.parquet`` in ``DOWNLOAD_ROWS_SCHEMA``, ``embed/<shard>.parquet`` with the CLIP scores) with
their markers written by the harness, so no network or model is needed; that step is timed as "synthesize" but
is not part of the driver's cost. Each size runs in its own child interpreter, so peak RSS is per size; inside
it a thread samples the RSS every 20 ms and each stage reports its wall time, its CPU time (all threads; less
disturbed than wall time by other jobs on the machine) and the peak RSS seen during it. The DuckDB settings are
the recipe defaults (``DuckDBConfig()``; ``--memory-limit`` tries another limit).

Baseline: linear scaling. ``ratio = 10 * seconds_100k / seconds_1M`` (crawl + plan + merge/judge) is 1.0 when
the cost grows linearly with the row count and higher is better; ``rss_growth`` is the peak RSS at 1M over the
peak at 100k. Targets: ratio >= 0.9, rss_growth <= 1.5, and a 13M-row merge (extrapolated linearly from 1M)
under 10 minutes on 2 cores.

    python benchmarks/scale.py                       # 100000 and 1000000 candidates (a few minutes)
    python benchmarks/scale.py --sizes 10000 100000  # a quick check
Last line: RESULT scale ratio=... rss_growth=... seconds_1m=... extrapolated_13m_merge_s=... ratio_cpu=...
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import pipeline.stages.crawl as crawl_module
import pipeline.stages.judge as judge_module
from pipeline.core import schema
from pipeline.core.config import DownloadConfig, DuckDBConfig, EmbedConfig, FilterConfig, Recipe, SourceSpec
from pipeline.core.harness import Build, Stage, run_reduce, run_step, run_unit
from pipeline.stages import stage_named
from pipeline.stages.download.results import DOWNLOAD_ROWS_SCHEMA

TINY_CONFIG = Path(__file__).resolve().parent.parent / "dalip" / "model_configs" / "DALIP-Tiny.json"
SHARD_SIZE = 10_000
SAMPLE_SECONDS = 0.02
TARGET_MERGE_ROWS = 13_000_000
PIPELINE_STAGES = ("crawl", "plan", "merge+judge")  # what the driver costs; "synthesize" stands in for the network
CRAWL_STEPS = ("mark_repeats",)  # the DuckDB repeat check and the copy that rejects repeats, inside crawl
JUDGE_STEPS = ("GroupedMerge", "clip_thresholds", "write_manifest", "summarize")  # timed inside merge+judge

# Pool: what fraction of rows repeat an earlier uid, have an ftp URL, no caption, or no open license.
REPEAT_FRACTION = 0.002
FTP_FRACTION = 0.001
NO_CAPTION_FRACTION = 0.001
LICENSES = ((None, 0.5), ("cc-by-4.0", 0.25), ("cc0-1.0", 0.2), ("CC BY-SA 3.0", 0.049), ("all rights reserved", 0.001))
WORDS = np.array(
    "a an the photo picture of red green blue small large old new plant tree flower leaf garden city street "
    "dog cat house car river sky sunset close up view on in with near".split()
)
# Download outcome of the planned rows (the rest are "ok").
FAILED = (
    (schema.STATUS_FAILED_DOWNLOAD, 0.08, "HTTP Error 404: Not Found"),
    (schema.STATUS_OPTED_OUT, 0.01, "X-Robots-Tag: noai"),
    (schema.STATUS_FAILED_DECODE, 0.01, "cannot decode image"),
)


# ---- the pool (parent, not measured) -----------------------------------------------------------------------------


def make_pool(path: Path, n: int, seed: int = 0) -> None:
    """A url+caption pool of ``n`` rows written column-wise (no per-row Python)."""
    rng = np.random.default_rng(seed)
    index = np.arange(n)
    repeat = rng.random(n) < REPEAT_FRACTION
    repeat[0] = False
    uid_of = np.where(repeat, rng.integers(0, np.maximum(index, 1)), index)  # a repeat takes an earlier row's uid
    scheme = np.where(rng.random(n) < FTP_FRACTION, "ftp://img.example.org/", "https://img.example.org/")
    table = pa.table(
        {
            "uid": _joined("u", pa.array(uid_of).cast(pa.string())),
            "url": _joined(pa.array(scheme), pa.array(index).cast(pa.string()), ".jpg"),
            "caption": _captions(rng, n),
            "license": _licenses(rng, n),
        }
    )
    pq.write_table(table, path, compression="zstd")


def _joined(*parts: Any) -> pa.Array:
    return pc.binary_join_element_wise(*parts, "")


def _captions(rng: np.random.Generator, n: int, max_words: int = 8) -> pa.Array:
    """1 to ``max_words`` random words; a few rows without a caption."""
    count = rng.integers(1, max_words + 1, n)
    words = WORDS[rng.integers(0, len(WORDS), (max_words, n))]
    columns = [pa.array(words[k], mask=count <= k) for k in range(max_words)]
    captions = pc.binary_join_element_wise(*columns, " ", null_handling="skip")
    return pc.if_else(pa.array(rng.random(n) < NO_CAPTION_FRACTION), pa.scalar(None, pa.string()), captions)


def _licenses(rng: np.random.Generator, n: int) -> pa.Array:
    codes = [code for code, _ in LICENSES]
    which = rng.choice(len(codes), n, p=[p for _, p in LICENSES])
    return pa.DictionaryArray.from_arrays(pa.array(which, pa.int32()), pa.array(codes, pa.string())).cast(pa.string())


# ---- the build (child) ---------------------------------------------------------------------------------------------


def make_recipe(work: Path, duckdb: DuckDBConfig | None = None) -> Recipe:
    options = {"path": str(work / "pool.parquet"), "id_col": "uid", "license_col": "license"}
    pool = SourceSpec("pool", "url_caption_pool", options)
    return Recipe(
        name="scale",
        output_dir=str(work / "build"),
        sources=[pool],
        download=DownloadConfig(shard_size=SHARD_SIZE),
        embed=EmbedConfig(model="DALIP-Tiny", pretrained=None, random_init=True, model_config=str(TINY_CONFIG)),
        filter=FilterConfig(min_image_side=64, caption_min_words=2, clip_top_fraction={"general": 0.9}),
        duckdb=duckdb or DuckDBConfig(),
    )


def synthesize_download(build: Build, shard: str, rng: np.random.Generator) -> int:
    """``download/<shard>.parquet`` as the stage leaves it (status, sizes, sha256, tar, key), with its marker."""
    stage = stage_named("download")
    ids = pq.read_table(build.layout.plan_file(shard), columns=["sample_id"])["sample_id"]
    n = len(ids)
    status = np.full(n, schema.STATUS_OK, dtype=object)
    error = np.full(n, None, dtype=object)
    draw = rng.random(n)
    low = 0.0
    for name, fraction, message in FAILED:
        hit = (draw >= low) & (draw < low + fraction)
        status[hit], error[hit] = name, message
        low += fraction
    ok = pa.array(status == schema.STATUS_OK)
    original = rng.integers(32, 2048, (2, n)).astype(np.int32)
    resized = np.minimum(original, 256).astype(np.int32)
    null_int = pa.scalar(None, pa.int32())
    keys = _joined(shard, pc.utf8_lpad(pa.array(np.arange(n)).cast(pa.string()), 4, "0"))
    table = pa.table(
        {
            "sample_id": ids,
            "status": pa.array(status, pa.string()),
            "error": pa.array(error, pa.string()),
            "image_sha256": pc.if_else(ok, _hex_digests(rng, n), pa.scalar(None, pa.string())),
            "width": pc.if_else(ok, pa.array(resized[0]), null_int),
            "height": pc.if_else(ok, pa.array(resized[1]), null_int),
            "original_width": pc.if_else(ok, pa.array(original[0]), null_int),
            "original_height": pc.if_else(ok, pa.array(original[1]), null_int),
            "shard": pc.if_else(ok, pa.scalar(f"download/{shard}.tar"), pa.scalar(None, pa.string())),
            "key": pc.if_else(ok, keys, pa.scalar(None, pa.string())),
        },
        schema=DOWNLOAD_ROWS_SCHEMA,
    )
    counts = {s: int(c) for s, c in zip(*np.unique(status.astype(str), return_counts=True), strict=True)}
    _write_unit(build, stage, shard, table, {"rows": n, "status": counts})
    return n


def synthesize_embed(build: Build, shard: str, rng: np.random.Generator) -> int:
    """``embed/<shard>.parquet`` (sample_id, key, clip_model, clip_score) for the shard's ok rows, with its marker."""
    stage, model = stage_named("embed"), build.recipe.embed.model_id
    done = pq.read_table(build.layout.unit_file("download", shard), columns=["sample_id", "key", "status"])
    ok = done.filter(pc.equal(done["status"], schema.STATUS_OK)).select(["sample_id", "key"]).sort_by("key")
    n = ok.num_rows
    table = ok.append_column("clip_model", pa.array(np.full(n, model, dtype=object), pa.string()))
    table = table.append_column("clip_score", pa.array(rng.normal(0.25, 0.05, n).astype(np.float32)))
    _write_unit(build, stage, shard, table, {"rows": n, "model": model, "dim": None, "synthetic": True})
    return n


def _hex_digests(rng: np.random.Generator, n: int) -> pa.Array:
    return pa.array(np.frombuffer(rng.bytes(32 * n).hex().encode(), dtype="S64")).cast(pa.string())


def _write_unit(build: Build, stage: Stage, unit: str, table: pa.Table, stats: dict[str, Any]) -> None:
    """Write a unit's Parquet through the harness (scratch folder, publish, marker), as the real stage does."""

    def work(out: Path) -> dict[str, Any]:
        pq.write_table(table, out / f"{unit}.parquet", compression="zstd")
        return stats

    provenance = {"stage": stage.name, "synthetic": True}
    run_step(stage.dir(build), unit, work, decides=stage.decides(build, unit), provenance=provenance)


# ---- measurement (child) -------------------------------------------------------------------------------------------


class RssSampler:
    """Samples this process's RSS from a background thread; ``peak(t0, t1)`` is the largest sample in a window."""

    def __init__(self, interval: float = SAMPLE_SECONDS) -> None:
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._process = psutil.Process()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def __enter__(self) -> RssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def sample(self) -> float:
        now = time.perf_counter()
        self.samples.append((now, self._process.memory_info().rss))
        return now

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def peak(self, start: float, end: float) -> int:
        return max(rss for t, rss in self.samples if start <= t <= end)


class Stopwatch:
    """Named time windows (stages and steps inside them); each reports its seconds and peak RSS."""

    def __init__(self, sampler: RssSampler) -> None:
        self.sampler = sampler
        self.windows: dict[str, tuple[float, float, float]] = {}

    @contextlib.contextmanager
    def measure(self, name: str) -> Iterator[None]:
        start, cpu = self.sampler.sample(), time.process_time()
        try:
            yield
        finally:
            self.windows[name] = (start, self.sampler.sample(), time.process_time() - cpu)

    def wrap(self, name: str, func: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.measure(name):
                return func(*args, **kwargs)

        return timed

    def report(self) -> dict[str, dict[str, float]]:
        return {
            name: {
                "seconds": round(end - start, 3),
                "cpu_seconds": round(cpu, 3),
                "peak_mb": round(self.sampler.peak(start, end) / 2**20, 1),
            }
            for name, (start, end, cpu) in self.windows.items()
        }


@contextlib.contextmanager
def steps_timed(watch: Stopwatch, module: ModuleType, names: tuple[str, ...]) -> Iterator[None]:
    """Time the functions a stage calls by these names (the repeat check; thresholds, manifest, summary)."""
    originals = {name: getattr(module, name) for name in names if callable(getattr(module, name, None))}
    for name, func in originals.items():
        setattr(module, name, watch.wrap(name, func))
    try:
        yield
    finally:
        for name, func in originals.items():
            setattr(module, name, func)


def run_build(work: Path, n: int, duckdb: DuckDBConfig) -> dict[str, Any]:
    """Crawl, plan, synthesize, merge + judge one build; per stage seconds and peak RSS."""
    recipe = make_recipe(work, duckdb)
    build = Build.of(recipe)
    rng = np.random.default_rng(1)
    with RssSampler() as sampler:
        watch = Stopwatch(sampler)
        with watch.measure("crawl"), steps_timed(watch, crawl_module, CRAWL_STEPS):
            crawl = run_unit(stage_named("crawl"), build, "pool")
        with watch.measure("plan"):
            shards = stage_named("download").plan(build)
        with watch.measure("synthesize"):
            for shard in shards:
                synthesize_download(build, shard, rng)
                synthesize_embed(build, shard, rng)
        with watch.measure("merge+judge"), steps_timed(watch, judge_module, JUDGE_STEPS):
            judged = run_reduce(stage_named("judge"), build)
    manifest_rows = pq.ParquetFile(build.layout.manifest).metadata.num_rows
    if manifest_rows != n:
        raise RuntimeError(f"manifest has {manifest_rows} rows for {n} candidates")
    stages = watch.report()
    return {
        "n": n,
        "shards": len(shards),
        "stages": stages,
        "seconds": round(sum(stages[s]["seconds"] for s in PIPELINE_STAGES), 3),
        "cpu_seconds": round(sum(stages[s]["cpu_seconds"] for s in PIPELINE_STAGES), 3),
        "peak_mb": max(stages[s]["peak_mb"] for s in PIPELINE_STAGES),
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "crawl_status": crawl["stats"]["status"],
        "manifest_rows": manifest_rows,
        "kept": judged["stats"]["kept"],
        "by_status": judged["stats"]["by_status"],
    }


# ---- driver (parent) -----------------------------------------------------------------------------------------------


def run_size(root: Path, n: int, keep: bool, memory_limit: str) -> dict[str, Any]:
    """Generate the pool here, run the build in a child interpreter (its own peak RSS), return its report."""
    work = root / f"n{n}"
    work.mkdir(parents=True)
    start = time.perf_counter()
    make_pool(work / "pool.parquet", n)
    print(f"[{n}] pool generated in {time.perf_counter() - start:.1f}s", flush=True)
    result_file = work / "result.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(n), "--work", str(work)]
    command += ["--memory-limit", memory_limit]
    subprocess.run(command, check=True)
    result = json.loads(result_file.read_text())
    print(f"[{n}] done in {result['seconds']:.1f}s (pipeline), peak {result['peak_mb']:.0f} MB", flush=True)
    if not keep:
        shutil.rmtree(work, ignore_errors=True)
    return result


def child(n: int, work: Path, memory_limit: str) -> None:
    result = run_build(work, n, DuckDBConfig(memory_limit=memory_limit))
    (work / "result.json").write_text(json.dumps(result))


def print_table(results: list[dict[str, Any]]) -> None:
    """Per stage (and step inside it): wall seconds, CPU seconds (all threads) and peak RSS, at each size."""
    rows = ["crawl", *(f"  {s}" for s in CRAWL_STEPS), "plan", "(synthesize)", "merge+judge"]
    rows += [f"  {s}" for s in JUDGE_STEPS]
    sizes = [_size(r["n"]) for r in results]
    print("| stage | " + " | ".join(f"{n} s | {n} cpu s | {n} peak MB" for n in sizes) + " |")
    print("|---|" + "---:|---:|---:|" * len(results))
    for row in rows:
        cells = [r["stages"].get(row.strip().strip("()")) for r in results]
        print(f"| {row} | " + " | ".join(_cells(c) for c in cells) + " |")
    totals = [f"**{r['seconds']:.2f}** | **{r['cpu_seconds']:.2f}** | **{r['peak_mb']:.0f}**" for r in results]
    print("| **total (crawl + plan + merge/judge)** | " + " | ".join(totals) + " |")
    print("| ru_maxrss (whole child) | " + " | ".join(f"| | {r['ru_maxrss_mb']:.0f}" for r in results) + " |")


def _cells(stage: dict[str, float] | None) -> str:
    if stage is None:  # a step the stage no longer calls by that name
        return "- | - | -"
    return f"{stage['seconds']:.2f} | {stage['cpu_seconds']:.2f} | {stage['peak_mb']:.0f}"


def _size(n: int) -> str:
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def result_line(small: dict[str, Any], large: dict[str, Any], memory_limit: str) -> str:
    """``ratio`` is scaled by the size factor, so 1.0 is linear for any pair of sizes (10x for the defaults)."""
    factor = large["n"] / small["n"]
    merge = large["stages"]["merge+judge"]["seconds"]
    big, little = _size(large["n"]).lower(), _size(small["n"]).lower()
    pairs = {
        "ratio": f"{factor * small['seconds'] / large['seconds']:.2f}",
        "rss_growth": f"{large['peak_mb'] / small['peak_mb']:.2f}",
        f"seconds_{big}": f"{large['seconds']:.1f}",
        "extrapolated_13m_merge_s": f"{merge * TARGET_MERGE_ROWS / large['n']:.0f}",
        "ratio_cpu": f"{factor * small['cpu_seconds'] / large['cpu_seconds']:.2f}",
        f"seconds_{little}": f"{small['seconds']:.1f}",
        f"merge_s_{little}": f"{small['stages']['merge+judge']['seconds']:.1f}",
        f"merge_s_{big}": f"{merge:.1f}",
        f"peak_mb_{little}": f"{small['peak_mb']:.0f}",
        f"peak_mb_{big}": f"{large['peak_mb']:.0f}",
        "duckdb_memory_limit": memory_limit,
    }
    return "RESULT scale " + " ".join(f"{k}={v}" for k, v in pairs.items())


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs=2, default=[100_000, 1_000_000], metavar=("SMALL", "LARGE"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary build folders")
    parser.add_argument("--memory-limit", default=DuckDBConfig().memory_limit, help="DuckDB memory_limit")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.work, args.memory_limit)
        return
    settings = asdict(DuckDBConfig(memory_limit=args.memory_limit))
    print(f"DuckDB: {settings} (recipe default: {asdict(DuckDBConfig())}); shard size {SHARD_SIZE}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="plantmix-scale-"))
    try:
        results = [run_size(root, n, args.keep, args.memory_limit) for n in args.sizes]
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    print()
    for r in results:
        counts = f"crawl {r['crawl_status']}; manifest {r['manifest_rows']} rows, kept {r['kept']}"
        print(f"[{r['n']}] {counts}; by status {r['by_status']}")
    print_table(results)
    print(result_line(*results, args.memory_limit))


if __name__ == "__main__":
    main()
