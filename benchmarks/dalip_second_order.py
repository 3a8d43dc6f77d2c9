"""Evidence run: does DALIP learn a distinction that lives in second-order statistics, where plain CLIP does not?

Eight classes of 32x32 images that differ only in how the colour channels co-vary: every pixel is drawn from a
Gaussian with the same mean (mid grey) and the same per-channel variance in every class, and a class is one sign
pattern of the three channel correlations (R-G, G-B, R-B, each +0.45 or -0.45). No class differs from another in
any pixel's or channel's mean or variance, only in the covariance. Captions name the class ("a photo of a
<name>."; names are arbitrary plant-like words, so the text side carries no hint).

Both methods train DALIP-Tiny from the same random init on the same pairs for the same steps (batch, lr,
schedule, seed); DALIP with alpha 0.5 (first- plus second-order InfoNCE), CLIP with alpha 1 (open_clip's loss
alone). Zero-shot top-1 on held-out images (``dalip.evaluate --classes --templates simple``): DALIP by ``f``, ``z``
and ``f+z``, CLIP by ``f``. Chance is 12.5 %. Several seeds; the table gives each and the mean +- std.

    python benchmarks/dalip_second_order.py                 # 3 seeds, 200 steps each (~15 min on 2 cores)
    python benchmarks/dalip_second_order.py --seeds 0 --steps 60
Last line: RESULT dalip_second_order ratio=<DALIP f+z mean top-1 / CLIP f mean top-1> ...
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from itertools import product
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
NAMES = ["sorrel", "tansy", "yarrow", "burdock", "mullein", "vetch", "teasel", "bryony"]
RHO = 0.45  # every sign pattern of three correlations of this size is a valid covariance


def class_covariances() -> list[np.ndarray]:
    """One 3x3 channel covariance per class: unit variances, correlations (+-RHO) in every sign pattern."""
    covariances = []
    for rg, gb, rb in product((1, -1), repeat=3):
        c = np.array([[1, rg * RHO, rb * RHO], [rg * RHO, 1, gb * RHO], [rb * RHO, gb * RHO, 1]])
        assert np.linalg.eigvalsh(c).min() > 0
        covariances.append(c)
    return covariances


def draw_image(covariance: np.ndarray, rng: np.random.Generator, size: int = 32, block: int = 1) -> bytes:
    """Colours drawn from ``covariance``: one per pixel (``block`` 1), or one per ``block`` x ``block`` square (8:
    one per DALIP-Tiny patch token, so the class is only in how the tokens co-vary)."""
    cells = rng.multivariate_normal(np.zeros(3), covariance, size=(size // block, size // block))
    pixels = np.repeat(np.repeat(cells, block, axis=0), block, axis=1)
    pixels = np.clip(128 + 40 * pixels, 0, 255).astype(np.uint8)  # same mean and spread for every class
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")  # lossless: JPEG's chroma subsampling would blur colours
    return buffer.getvalue()


def write_data(folder: Path, train: int, test_per_class: int, seed: int = 0, block: int = 1) -> Path:
    """Train shards + manifest under ``folder/train``; a folder-per-class test tree under ``folder/test``."""
    import webdataset as wds

    rng = np.random.default_rng(seed)
    covariances = class_covariances()
    shards = folder / "train"
    shards.mkdir(parents=True)
    rows = {"sample_id": [], "keep": [], "shard": [], "key": [], "caption": []}
    per_shard = 500
    for start in range(0, train, per_shard):
        name = f"{start // per_shard:05d}.tar"
        with wds.TarWriter(str(shards / name)) as sink:
            for i in range(start, min(train, start + per_shard)):
                label = int(rng.integers(len(NAMES)))
                caption = f"a photo of a {NAMES[label]}."
                key = f"{i:08d}"
                sink.write({"__key__": key, "png": draw_image(covariances[label], rng, block=block), "txt": caption})
                for column, value in zip(rows, (f"s{i}", True, name, key, caption), strict=True):
                    rows[column].append(value)
    pq.write_table(pa.table(rows), shards / "manifest.parquet")
    for label, name in enumerate(NAMES):
        (folder / "test" / name).mkdir(parents=True)
        for j in range(test_per_class):
            (folder / "test" / name / f"{j:04d}.png").write_bytes(draw_image(covariances[label], rng, block=block))
    return shards / "manifest.parquet"


def run(command: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "NO_ALBUMENTATIONS_UPDATE": "1"}
    done = subprocess.run([sys.executable, "-m", *command], cwd=REPO, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-3000:]}")


def train_and_evaluate(manifest: Path, tests: Path, out: Path, alpha: float, seed: int, args) -> dict:
    samples = pq.read_metadata(manifest).num_rows
    epochs = -(-args.steps * args.batch_size // samples)
    run(["dalip.train", "--manifest", str(manifest), "--output-dir", str(out), "--model", "DALIP-Tiny",
         "--epochs", str(epochs), "--max-steps", str(args.steps), "--batch-size", str(args.batch_size),
         "--lr", str(args.lr), "--warmup", "20", "--precision", "fp32", "--workers", "1", "--seed", str(seed),
         "--alpha", str(alpha), "--mbdc-dim", "16", "--mbdc-dropout", str(args.mbdc_dropout),
         "--shuffle-buffer", "500", "--save-every", str(args.steps),
         "--log-every", "10"])  # fmt: skip
    checkpoint = out / "checkpoints" / f"step_{args.steps:08d}.pt"
    report = out / "zeroshot.json"
    run(["dalip.evaluate", "--checkpoint", str(checkpoint), "--classes", str(tests), "--templates", "simple",
         "--output", str(report)])  # fmt: skip
    return json.loads(report.read_text())["results"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--train", type=int, default=4000, help="training pairs")
    parser.add_argument("--test-per-class", type=int, default=50)
    parser.add_argument("--mbdc-dropout", type=float, default=0.5, help="the trainer's default")
    parser.add_argument("--block", type=int, default=1, help="pixels per colour draw: 1, or 8 (one per patch)")
    args = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="plantmix-bench-second-order-"))
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)
    rows: dict[str, list[float]] = {"DALIP f": [], "DALIP z": [], "DALIP f+z": [], "CLIP f": []}
    try:
        manifest = write_data(work / "data", args.train, args.test_per_class, block=args.block)
        print("| seed | DALIP f | DALIP z | DALIP f+z | CLIP f | minutes |\n|---|---|---|---|---|---|", flush=True)
        for seed in args.seeds:
            start = time.perf_counter()
            dalip = train_and_evaluate(manifest, work / "data" / "test", work / f"dalip-{seed}", 0.5, seed, args)
            clip = train_and_evaluate(manifest, work / "data" / "test", work / f"clip-{seed}", 1.0, seed, args)
            scores = [dalip["f"]["top1"], dalip["z"]["top1"], dalip["both"]["top1"], clip["f"]["top1"]]
            for name, value in zip(rows, scores, strict=True):
                rows[name].append(value)
            minutes = (time.perf_counter() - start) / 60
            print(f"| {seed} | " + " | ".join(f"{v:.1f}" for v in scores) + f" | {minutes:.1f} |", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    def spread(values: list[float]) -> str:
        return f"{statistics.mean(values):.1f} +- {statistics.stdev(values) if len(values) > 1 else 0:.1f}"

    print("| mean +- std | " + " | ".join(spread(v) for v in rows.values()) + " | |")
    mean = {name: statistics.mean(values) for name, values in rows.items()}
    print(
        f"RESULT dalip_second_order ratio={mean['DALIP f+z'] / mean['CLIP f']:.3f} "
        f"dalip_fz={mean['DALIP f+z']:.1f} dalip_z={mean['DALIP z']:.1f} dalip_f={mean['DALIP f']:.1f} "
        f"clip_f={mean['CLIP f']:.1f} seeds={len(args.seeds)} steps={args.steps} batch={args.batch_size} "
        f"mbdc_dropout={args.mbdc_dropout} block={args.block} "
        f"chance={100 / len(NAMES):.1f}"
    )


if __name__ == "__main__":
    main()
