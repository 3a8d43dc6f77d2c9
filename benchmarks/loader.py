"""Benchmark: the DALIP training loader streaming a release vs a bare webdataset pipeline over the same tars.

A synthetic release is written at each ``--samples`` size: shards of ``--shard-size`` samples, each a small JPEG
(``--image-size`` px, 64 distinct images), a ``.txt`` caption and a ``.json`` with a sample id, a license and a
caption variant, as ``pipeline/stages/publish`` writes them, plus ``sizes.json``; and a manifest naming every
sample (``keep`` true) with its caption.

Sides, each in its own child process (its peak RSS, loader workers included, is its own), all with the same
preprocess (open_clip's eval transform at the image size), open_clip's tokenizer, batch size, shuffle buffer and
loader workers, counting samples until one pass is streamed:
- ``bare``: ``wds.WebDataset(urls).shuffle(n).decode("pil").to_tuple("jpg", "txt")``, mapped and batched;
- ``release``: ours, ``dalip.data.read_release`` + ``ShardStream`` (what ``--train-data 'dir/{..}.tar'`` runs);
- ``manifest``: ours, ``dalip.data.read_manifest`` + ``ShardStream`` (``--manifest``: captions from the manifest's
  on-disk caption index; the index build is timed apart and included in the total).

    python benchmarks/loader.py                        # 100k and 1M samples
    python benchmarks/loader.py --samples 20000 200000 # a quick check
Last line: RESULT loader ratio=<release samples/s / bare samples/s at the largest size> rss_mb=<release peak at
the largest> rss_growth=<release peak largest / smallest> manifest_ratio=<manifest / bare> ...
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq
from child_run import run_side
from PIL import Image

SIDES = ("bare", "release", "manifest")
WORDS = "a photo of the red green small large leaf flower tree fern moss bark seed fruit plant".split()


def write_release(folder: Path, samples: int, shard_size: int, image_size: int) -> None:
    """Shards ``00000.tar``... with jpg/txt/json, ``sizes.json`` and ``manifest.parquet``. One shard is written and
    copied (keys repeat across shards, as they may in a release: a sample is its shard plus its key)."""
    import webdataset as wds

    rng = np.random.default_rng(0)
    images = []
    for _ in range(64):  # smooth random patches: JPEGs of a realistic size for their pixel count
        small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(small).resize((image_size, image_size), Image.BILINEAR).save(buffer, format="JPEG")
        images.append(buffer.getvalue())
    folder.mkdir(parents=True)
    keys = [f"{i:09d}" for i in range(shard_size)]
    captions = [" ".join(WORDS[j] for j in rng.integers(0, len(WORDS), 8)) for _ in range(shard_size)]
    template = folder / "template.tar"
    with wds.TarWriter(str(template)) as sink:
        for i, (key, caption) in enumerate(zip(keys, captions, strict=True)):
            meta = {"sample_id": f"s{i:09d}", "license": "cc-by", "caption_variants": {"dalip": caption}}
            sink.write({"__key__": key, "jpg": images[i % 64], "txt": caption, "json": json.dumps(meta)})
    shards = samples // shard_size
    if shards * shard_size != samples:
        raise SystemExit(f"--samples {samples}: a multiple of --shard-size {shard_size}, please")
    names = [f"{shard:05d}.tar" for shard in range(shards)]
    for name in names:
        shutil.copyfile(template, folder / name)
    template.unlink()
    (folder / "sizes.json").write_text(json.dumps(dict.fromkeys(names, shard_size)))
    table = pa.table(
        {
            "sample_id": [f"s{n}-{key}" for n in range(shards) for key in keys],
            "shard": [name for name in names for _ in keys],
            "key": keys * shards,
            "caption": captions * shards,
            "keep": pa.array([True] * samples),
        }
    )
    pq.write_table(table, folder / "manifest.parquet")


class TreePeak:
    """Peak RSS of this process plus its children (the loader workers), sampled every 20 ms."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            total = self.process.memory_info().rss
            for worker in self.process.children(recursive=True):
                try:
                    total += worker.memory_info().rss
                except psutil.Error:
                    continue  # a worker that just exited
            self.peak = max(self.peak, total)

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak / 2**20


def bare_loader(urls: list[str], preprocess, tokenizer, batch_size: int, shuffle: int, workers: int):
    import torch
    import webdataset as wds
    from torch.utils.data import DataLoader

    def collate(samples):
        images, texts = zip(*samples, strict=True)
        return {"image": torch.stack(images), "text": tokenizer(list(texts))}

    dataset = (
        wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.single_node_only)
        .shuffle(shuffle)
        .decode("pil")
        .to_tuple("jpg", "txt")
        .map_tuple(preprocess, lambda text: text)
        .batched(batch_size, collation_fn=collate, partial=False)
    )
    return DataLoader(dataset, batch_size=None, num_workers=workers)


def stream_side(side: str, folder: Path, batch_size: int, workers: int, shuffle: int, image_size: int) -> dict:
    """Stream one pass of the release; samples/s over the whole pass (index build included for manifest)."""
    import open_clip

    from dalip.data import ShardStream, make_loader, read_manifest, read_release

    preprocess = open_clip.image_transform(image_size, is_train=False)
    tokenizer = open_clip.get_tokenizer("ViT-B-32")
    total = sum(json.loads((folder / "sizes.json").read_text()).values())
    meter = TreePeak()
    start = time.perf_counter()
    index_s = 0.0
    if side == "bare":
        loader = bare_loader(
            sorted(map(str, folder.glob("*.tar"))), preprocess, tokenizer, batch_size, shuffle, workers
        )
    else:
        if side == "release":
            selection = read_release(str(folder / f"{{00000..{len(list(folder.glob('*.tar'))) - 1:05d}}}.tar"))
        else:
            selection = read_manifest(folder / "manifest.parquet", index_folder=folder / "index")
            index_s = time.perf_counter() - start
        assert selection.num_samples == total, (selection.num_samples, total)
        stream = ShardStream(selection, preprocess, tokenizer, batch_size, shuffle_buffer=shuffle)
        loader = make_loader(stream, workers)
    seen = 0
    for batch in loader:
        seen += len(batch["image"])
        if seen + batch_size > total:  # one pass: the bare pipeline drops the last partial batch, so does this
            break
    seconds = time.perf_counter() - start
    return {"side": side, "samples": seen, "seconds": seconds, "index_s": index_s, "peak_rss_mb": meter.stop()}


def in_child(side: str, folder: Path, args: argparse.Namespace) -> dict:
    options = {"--batch-size": args.batch_size, "--workers": args.workers, "--shuffle": args.shuffle,
               "--image-size": args.image_size}  # fmt: skip
    return run_side(__file__, side, [str(folder), *(str(x) for kv in options.items() for x in kv)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--shuffle", type=int, default=1000, help="shuffle buffer, both sides")
    parser.add_argument("--child", nargs=2, metavar=("SIDE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        side, folder = args.child
        print(json.dumps(stream_side(side, Path(folder), args.batch_size, args.workers, args.shuffle, args.image_size)))
        return
    work = Path(tempfile.mkdtemp(prefix="plantmix-bench-loader-"))
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    results: dict[int, dict[str, dict]] = {}
    try:
        for samples in sorted(args.samples):
            folder = work / f"release-{samples}"
            start = time.perf_counter()
            write_release(folder, samples, args.shard_size, args.image_size)
            size = sum(p.stat().st_size for p in folder.iterdir()) / 2**20
            print(f"{samples} samples: release of {size:.0f} MiB written in {time.perf_counter() - start:.1f} s")
            results[samples] = {side: in_child(side, folder, args) for side in SIDES}
            for side, r in results[samples].items():
                extra = f" (caption index {r['index_s']:.1f} s)" if r["index_s"] else ""
                print(f"  {side:8s}: {r['samples'] / r['seconds']:7.0f} samples/s, {r['seconds']:.1f} s{extra}, "
                      f"peak RSS {r['peak_rss_mb']:.0f} MB", flush=True)  # fmt: skip
            shutil.rmtree(folder)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    small, large = min(results), max(results)
    big = results[large]

    def rate(side: str) -> float:
        return big[side]["samples"] / big[side]["seconds"]

    print(
        f"RESULT loader ratio={rate('release') / rate('bare'):.3f} rss_mb={big['release']['peak_rss_mb']:.0f} "
        f"rss_growth={big['release']['peak_rss_mb'] / results[small]['release']['peak_rss_mb']:.2f} "
        f"manifest_ratio={rate('manifest') / rate('bare'):.3f} manifest_rss_mb={big['manifest']['peak_rss_mb']:.0f} "
        f"manifest_rss_growth={big['manifest']['peak_rss_mb'] / results[small]['manifest']['peak_rss_mb']:.2f} "
        f"bare_samples_per_s={rate('bare'):.0f} bare_rss_mb={big['bare']['peak_rss_mb']:.0f} samples={large} "
        f"small={small} workers={args.workers} batch={args.batch_size}"
    )


if __name__ == "__main__":
    main()
