"""Benchmark: our embed stage vs a bare open_clip loop over the same images, one after the other.

Same model, batch size, torch threads and images (JPEGs in a webdataset shard, as img2dataset writes them).
The bare loop decodes and preprocesses in the main process, then encodes images and captions; ours runs the
embed stage (tar read, decoding in DataLoader workers, image + text encoding, float16 sidecars, scores).

    python benchmarks/embed.py --model ViT-B-32 --images 400
    python benchmarks/embed.py --model DALIP-Tiny --images 3000
Last line: RESULT embed ratio=<ours/bare images/s> ours_ips=... bare_ips=...
"""

from __future__ import annotations

import argparse
import io
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import webdataset as wds
from PIL import Image

from pipeline.core.config import EmbedConfig, Recipe, SourceSpec
from pipeline.core.harness import Build, run_unit
from pipeline.models.clip import load_clip
from pipeline.stages.embed import EmbedStage

TINY_CONFIG = Path(__file__).resolve().parent.parent / "dalip" / "model_configs" / "DALIP-Tiny.json"


def make_shard(download_dir: Path, n: int, size: int) -> list[bytes]:
    """A finished download shard in the stage's own formats: tar, download rows and the plan's captions."""
    (download_dir / "plan").mkdir(parents=True)
    rng = np.random.default_rng(0)
    blobs, rows = [], []
    with wds.TarWriter(str(download_dir / "00000.tar")) as sink:
        for i in range(n):
            pixels = rng.integers(0, 255, (size // 8, size // 8, 3), dtype=np.uint8).repeat(8, 0).repeat(8, 1)
            buf = io.BytesIO()
            Image.fromarray(pixels).save(buf, "JPEG", quality=90)
            key = f"{i:09d}"
            sink.write({"__key__": key, "jpg": buf.getvalue(), "txt": f"a photo of plant number {i}"})
            blobs.append(buf.getvalue())
            rows.append({"sample_id": f"{i:032x}", "key": key, "caption": f"a photo of plant number {i}",
                         "status": "ok"})  # fmt: skip
    table = pa.Table.from_pylist(rows)
    pq.write_table(table.select(["sample_id", "key", "status"]), download_dir / "00000.parquet")
    pq.write_table(table.select(["sample_id", "caption"]), download_dir / "plan" / "00000.parquet")
    return blobs


@torch.no_grad()
def bare_loop(config: EmbedConfig, blobs: list[bytes], captions: list[str]) -> float:
    torch.manual_seed(config.seed)
    model, _, preprocess = open_clip.create_model_and_transforms(config.model)
    model.eval()
    tokenizer = open_clip.get_tokenizer(config.model)
    start = time.perf_counter()
    for i in range(0, len(blobs), config.batch_size):
        images = torch.stack(
            [preprocess(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs[i : i + config.batch_size]]
        )
        img = model.encode_image(images, normalize=True)
        txt = model.encode_text(tokenizer(captions[i : i + config.batch_size]), normalize=True)
        (img * txt).sum(-1)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="DALIP-Tiny")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=256, help="side of the stored JPEGs")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2, help="our DataLoader decode workers")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both sides")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    open_clip.add_model_config(str(TINY_CONFIG))
    config = EmbedConfig(model=args.model, random_init=True, pretrained=None, batch_size=args.batch_size,
                         workers=args.workers, threads=args.threads, device="cpu")  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="plantmix-bench-embed-"))
    try:
        blobs = make_shard(work / "download", args.images, args.size)
        captions = [f"a photo of plant number {i}" for i in range(args.images)]
        load_clip(config)  # model construction is not what we measure, on either side
        bare_s = bare_loop(config, blobs, captions)
        recipe = Recipe(name="bench", output_dir=str(work), sources=[SourceSpec("bench", "url_caption_pool")],
                        embed=config)  # fmt: skip
        start = time.perf_counter()
        run_unit(EmbedStage(), Build.of(recipe), "00000")
        ours_s = time.perf_counter() - start
        ours_ips, bare_ips = args.images / ours_s, args.images / bare_s
        print(f"bare open_clip loop: {args.images} images in {bare_s:.1f}s = {bare_ips:.1f} images/s")
        print(f"ours (embed stage) : {args.images} images in {ours_s:.1f}s = {ours_ips:.1f} images/s")
        print(f"RESULT embed ratio={ours_ips / bare_ips:.2f} ours_ips={ours_ips:.1f} bare_ips={bare_ips:.1f} "
              f"model={args.model} images={args.images} batch={args.batch_size} threads={args.threads} "
              f"workers={args.workers}")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
