"""Benchmark: our download stage vs a bare ``img2dataset.download`` call on the same URLs.

Both run in this process, one after the other, against the same loopback image server (a separate
process), with the same resize, thread and shard settings. Ours = plan + per-shard img2dataset
``Downloader`` through the shard harness, shards run concurrently by a thread pool exactly as the
flow's default task runner does, plus the robots.txt check and the manifest merge.

    python benchmarks/download.py --images 3000
Last line: RESULT download ratio=<ours/bare images/s> ours_ips=... bare_ips=...
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from pipeline.core import schema
from pipeline.core.config import DownloadConfig, Recipe, SourceSpec
from pipeline.core.harness import Build, run_reduce, run_step, run_unit
from pipeline.demo.sample_server import SampleServer
from pipeline.stages import STAGES


def make_images(folder: Path, n: int, size: int) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    base = np.linspace(0, 255, size, dtype=np.float32)
    for i in range(n):
        r, g, b = rng.integers(0, 255, 3)
        img = np.stack(
            [
                (base[None, :] + r) % 256 + 0 * base[:, None],
                (base[:, None] + g) % 256 + 0 * base[None, :],
                np.full((size, size), b, np.float32),
            ],
            axis=-1,
        )
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{i}.jpg", quality=90)


def _serve(folder: str, port_queue: mp.Queue, stop: mp.Event) -> None:
    with SampleServer(folder) as server:
        port_queue.put(server.url)
        stop.wait()


def run_bare(url_file: Path, out: Path, cfg: DownloadConfig, processes: int) -> float:
    from img2dataset import download

    start = time.perf_counter()
    download(
        url_list=str(url_file),
        input_format="parquet",
        url_col="url",
        caption_col="caption",
        output_format="webdataset",
        output_folder=str(out),
        image_size=cfg.image_size,
        resize_mode=cfg.resize_mode,
        resize_only_if_bigger=cfg.resize_only_if_bigger,
        encode_quality=cfg.encode_quality,
        thread_count=cfg.thread_count,
        processes_count=processes,
        number_sample_per_shard=cfg.shard_size,
        timeout=cfg.timeout,
        retries=cfg.retries,
        extract_exif=False,
        save_additional_columns=["sample_id"],
        user_agent_token=cfg.user_agent_token,
    )
    return time.perf_counter() - start


def run_ours(recipe: Recipe, processes: int) -> float:
    """Every stage after the crawl (download, judge; embed is off), units on a thread pool as the flow runs them."""
    start = time.perf_counter()
    build = Build.of(recipe)
    for stage in [s for s in STAGES if s.name not in ("crawl_parts", "crawl")]:
        units = stage.plan(build)
        with ThreadPoolExecutor(max_workers=processes) as pool:
            list(pool.map(lambda unit, stage=stage: run_unit(stage, build, unit), units))
        run_reduce(stage, build)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=320, help="side of the served images")
    parser.add_argument("--shard-size", type=int, default=500)
    parser.add_argument("--threads", type=int, default=32)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="plantmix-bench-"))
    try:
        make_images(work / "images", args.images, args.size)
        ctx = mp.get_context("spawn")
        queue, stop = ctx.Queue(), ctx.Event()
        server = ctx.Process(target=_serve, args=(str(work / "images"), queue, stop), daemon=True)
        server.start()
        base = queue.get(timeout=60)
        urls = [f"{base}{i}.jpg" for i in range(args.images)]
        ids = [schema.sample_id_for("bench", u) for u in urls]
        pq.write_table(
            pa.table({"url": urls, "caption": [f"image {i}" for i in range(args.images)], "sample_id": ids}),
            work / "urls.parquet",
        )
        cfg = DownloadConfig(
            image_size=224,
            shard_size=args.shard_size,
            thread_count=args.threads,
            max_requests_per_host_per_second=0,
            allow_local_hosts=[urlsplit(base).netloc],  # the benchmark's own loopback image host
        )
        rows = [
            dict(sample_id=i, source="bench", domain="general", url=u, caption="c", status="pending", license="cc0-1.0")
            for i, u in zip(ids, urls, strict=True)
        ]
        recipe = Recipe(
            name="bench", output_dir=str(work / "ours"), sources=[SourceSpec("bench", "url_caption_pool")], download=cfg
        )
        crawl = pa.Table.from_pylist(rows, schema=schema.CANDIDATE_SCHEMA)  # the crawl, done by hand (with its marker)
        run_step(str(work / "ours" / "crawl"), "bench", lambda out: pq.write_table(crawl, out / "bench.parquet") or {})

        bare_s = run_bare(work / "urls.parquet", work / "bare", cfg, args.processes)
        ours_s = run_ours(recipe, args.processes)
        stop.set()
        server.join(timeout=10)
        ok = pq.read_table(work / "ours" / "manifest.parquet", columns=["status"])["status"].to_pylist().count("ok")
        bare_ok = sum(
            pq.read_table(p, columns=["status"])["status"].to_pylist().count("success")
            for p in (work / "bare").glob("*.parquet")
        )
        ours_ips, bare_ips = args.images / ours_s, args.images / bare_s
        print(f"bare img2dataset: {args.images} urls in {bare_s:.1f}s = {bare_ips:.0f} images/s ({bare_ok} ok)")
        print(f"ours            : {args.images} urls in {ours_s:.1f}s = {ours_ips:.0f} images/s ({ok} ok)")
        print(
            f"RESULT download ratio={ours_ips / bare_ips:.2f} ours_ips={ours_ips:.0f} bare_ips={bare_ips:.0f} "
            f"images={args.images} threads={args.threads} processes={args.processes}"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
