"""Benchmark: our download stage vs a bare ``img2dataset.download`` on real-size photos over HTTPS from one host.

The case PlantMix's sources look like (iNaturalist's bucket, GBIF media): HTTPS, few hosts, 1024-2048 px
JPEGs resized to 256. A loopback HTTPS server (a separate process, HTTP/1.1 keep-alive) serves photo-like
JPEGs with a self-signed certificate this script makes with ``openssl``; both sides trust it through their CA
setting and verify it (ours: ``download.ca_file``; img2dataset's urllib: ``SSL_CERT_FILE``), never by turning
verification off. Same URLs, process and thread counts, shard size and resize settings; one after the other.

``--distinct`` photos are generated (1024-2048 px on the long side, 4:3, 3:2 and portrait) and served under
``--images`` URLs (``<n>.jpg?copy=<i>``): each URL is fetched and decoded in full by both sides, so repeating
bytes costs neither side less; it only keeps the set-up short.

Ours = plan + shards (2 at a time, as the flow's task runner) + merge of the download stage, through the fetch
policy (guarded keep-alive pool, DNS cache, robots.txt, the image-area check) and the reduced-scale JPEG decode.
``psnr`` is the lowest PSNR over all images between our output and img2dataset's (both written as JPEG).

    python benchmarks/download_large.py --images 2000
Last line: RESULT download_large ratio=<ours/bare images/s> img_per_s=<ours> psnr=<min dB> ...
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import urlsplit

import cv2
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.core import schema
from pipeline.core.config import DownloadConfig, Recipe, SourceSpec
from pipeline.core.harness import Build, run_reduce, run_step, run_unit
from pipeline.demo.sample_server import SampleServer
from pipeline.stages import STAGES

SHAPES = ((4, 3), (3, 2), (3, 4), (1, 1))  # width:height


def photo_jpeg(index: int) -> bytes:
    """A JPEG that compresses and decodes like a camera photo: smooth shading, sensor noise, hard edges."""
    rng = np.random.default_rng(index)
    w_ratio, h_ratio = SHAPES[index % len(SHAPES)]
    long_side = int(rng.integers(1024, 2049))
    width, height = (
        (long_side, long_side * h_ratio // w_ratio)
        if w_ratio >= h_ratio
        else (long_side * w_ratio // h_ratio, long_side)
    )
    coarse = rng.uniform(0, 255, (9, 12, 3)).astype(np.float32)
    img = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    noise = rng.normal(0, 7, (256, 256, 3)).astype(np.float32)  # a tile: full-size normals are slow to draw
    img += np.tile(noise, (height // 256 + 1, width // 256 + 1, 1))[:height, :width]
    for _ in range(6):  # leaves and stems: sharp-edged blocks and lines
        x, y = int(rng.integers(0, width - 64)), int(rng.integers(0, height - 64))
        img[y : y + int(rng.integers(8, height // 3)), x : x + int(rng.integers(4, width // 3))] += rng.uniform(-80, 80)
    ok, buf = cv2.imencode(".jpg", img.clip(0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def _write_photo(args: tuple[str, int]) -> int:
    folder, index = args
    data = photo_jpeg(index)
    Path(folder, f"{index}.jpg").write_bytes(data)
    return len(data)


def make_photos(folder: Path, count: int) -> int:
    """``count`` photos in ``folder`` (both cores); returns their total size in bytes."""
    folder.mkdir(parents=True)
    with mp.get_context("spawn").Pool(2) as pool:
        return sum(pool.map(_write_photo, [(str(folder), i) for i in range(count)]))


def make_certificate(folder: Path) -> tuple[str, str]:
    """A self-signed certificate for 127.0.0.1 (EC P-256, one day); returns (certificate file, key file)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return str(cert), str(key)


def _serve(folder: str, tls: tuple[str, str], port_queue: mp.Queue, stop: mp.Event) -> None:
    with SampleServer(folder, tls=tls) as server:
        port_queue.put(server.url)
        stop.wait()


def run_bare(url_file: Path, out: Path, cfg: DownloadConfig, processes: int, ca_file: str) -> float:
    from img2dataset import download

    os.environ["SSL_CERT_FILE"] = ca_file  # urllib's default context (img2dataset's) reads it; spawn children inherit
    try:
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
    finally:
        del os.environ["SSL_CERT_FILE"]


def run_ours(recipe: Recipe, processes: int) -> float:
    """The download stage: plan, shards on a thread pool as the flow runs them, merge."""
    start = time.perf_counter()
    build = Build.of(recipe)
    stage = next(s for s in STAGES if s.name == "download")
    units = stage.plan(build)
    with ThreadPoolExecutor(max_workers=processes) as pool:
        list(pool.map(lambda unit: run_unit(stage, build, unit), units))
    run_reduce(stage, build)
    return time.perf_counter() - start


def images_by_sample_id(folder: Path) -> dict[str, bytes]:
    """sample_id -> the JPEG written, from every webdataset shard under ``folder``."""
    found: dict[str, bytes] = {}
    for tar in sorted(folder.rglob("*.tar")):
        with tarfile.open(tar) as archive:
            members: dict[str, dict[str, bytes]] = {}
            for member in archive.getmembers():
                key, _, ext = member.name.partition(".")
                members.setdefault(key, {})[ext] = archive.extractfile(member).read()
        for parts in members.values():
            if "jpg" in parts and "json" in parts:
                found[str(json.loads(parts["json"])["sample_id"])] = parts["jpg"]
    return found


def psnr(a: bytes, b: bytes) -> float:
    x, y = (cv2.imdecode(np.frombuffer(s, np.uint8), cv2.IMREAD_UNCHANGED).astype(np.float64) for s in (a, b))
    if x.shape != y.shape:
        return 0.0
    mse = float(np.mean((x - y) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255**2 / mse)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=2000, help="URLs fetched by each side")
    parser.add_argument("--distinct", type=int, default=200, help="different photos behind those URLs")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--shard-size", type=int, default=250)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--processes", type=int, default=2)
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="plantmix-bench-large-"))
    ctx = mp.get_context("spawn")
    stop = ctx.Event()
    server = None
    try:
        start = time.perf_counter()
        photo_bytes = make_photos(work / "photos", args.distinct)
        cert, key = make_certificate(work)
        print(f"{args.distinct} photos ({photo_bytes / args.distinct / 1e6:.2f} MB each) in "
              f"{time.perf_counter() - start:.0f} s")  # fmt: skip
        queue = ctx.Queue()
        server = ctx.Process(target=_serve, args=(str(work / "photos"), (cert, key), queue, stop), daemon=True)
        server.start()
        base = queue.get(timeout=60)
        urls = [f"{base}{i % args.distinct}.jpg?copy={i}" for i in range(args.images)]
        ids = [schema.sample_id_for("bench", u) for u in urls]
        pq.write_table(
            pa.table({"url": urls, "caption": [f"photo {i}" for i in range(args.images)], "sample_id": ids}),
            work / "urls.parquet",
        )
        cfg = DownloadConfig(
            image_size=args.image_size,
            shard_size=args.shard_size,
            thread_count=args.threads,
            max_requests_per_host_per_second=0,
            allow_local_hosts=[urlsplit(base).netloc],  # the benchmark's own loopback image host
            ca_file=cert,
        )
        rows = [
            dict(sample_id=i, source="bench", domain="plant", url=u, caption="c", status="pending", license="cc0-1.0")
            for i, u in zip(ids, urls, strict=True)
        ]
        recipe = Recipe(
            name="bench", output_dir=str(work / "ours"), sources=[SourceSpec("bench", "url_caption_pool")], download=cfg
        )
        crawl = pa.Table.from_pylist(rows, schema=schema.CANDIDATE_SCHEMA)  # the crawl, done by hand (with its marker)
        run_step(str(work / "ours" / "crawl"), "bench", lambda out: pq.write_table(crawl, out / "bench.parquet") or {})

        bare_s = run_bare(work / "urls.parquet", work / "bare", cfg, args.processes, cert)
        ours_s = run_ours(recipe, args.processes)

        ours_images, bare_images = images_by_sample_id(work / "ours" / "download"), images_by_sample_id(work / "bare")
        common = sorted(ours_images.keys() & bare_images.keys())
        quality = min((psnr(ours_images[i], bare_images[i]) for i in common), default=0.0)
        ours_ips, bare_ips = args.images / ours_s, args.images / bare_s
        for name, seconds, rate, written in (("bare img2dataset", bare_s, bare_ips, bare_images),
                                             ("ours", ours_s, ours_ips, ours_images)):  # fmt: skip
            print(f"{name:16}: {args.images} urls in {seconds:.1f}s = {rate:.1f} images/s ({len(written)} ok)")
        print(f"min PSNR over {len(common)} images written by both: {quality:.1f} dB")
        print(
            f"RESULT download_large ratio={ours_ips / bare_ips:.2f} img_per_s={ours_ips:.1f} psnr={quality:.1f} "
            f"bare_img_per_s={bare_ips:.1f} ok={len(ours_images)} bare_ok={len(bare_images)} images={args.images} "
            f"distinct={args.distinct} size={args.image_size} threads={args.threads} processes={args.processes}"
        )
    finally:
        stop.set()
        if server is not None:
            server.join(timeout=10)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
