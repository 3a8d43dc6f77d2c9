"""Image-text retrieval recall@k of a DALIP checkpoint on held-out pairs, as open_clip reports it.

``python -m dalip.retrieval --checkpoint C --manifest M [--caption dalip] [--limit N] [--output out.json]``
reads the kept rows of ``M`` (a held-out manifest: pairs never trained on) from their shards, embeds images and
captions and scores every image against every caption by ``f``, by ``z`` and by ``lambda1 f + lambda2 z``. The
metrics are open_clip_train's own (``get_clip_metrics``: image->text and text->image mean / median rank and
R@1/5/10), so the numbers compare with open_clip's zero-shot retrieval reports.
"""

from __future__ import annotations

import argparse
import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from open_clip_train.train import get_clip_metrics
from PIL import Image

from dalip.data import IMAGE_EXTENSIONS, read_manifest, read_shards
from dalip.evaluate import add_model_arguments, load_model, write_report
from dalip.model import DalipModel

log = logging.getLogger("dalip.retrieval")


def manifest_pairs(
    manifest: str | Path, preprocess: Any, caption: str = "caption", limit: int | None = None
) -> list[tuple[torch.Tensor, str]]:
    """(image tensor, caption) of the manifest's kept rows, shard by shard, at most ``limit``."""
    selection = read_manifest(manifest, caption)
    pairs: list[tuple[torch.Tensor, str]] = []
    for sample in read_shards(selection.shards):
        text = selection.caption_of(sample)
        ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
        if text is None or ext is None:
            continue
        try:
            image = Image.open(io.BytesIO(sample[ext])).convert("RGB")
        except OSError as exn:
            log.warning("skipping undecodable image %s:%s (%s)", sample["__url__"], sample["__key__"], exn)
            continue
        pairs.append((preprocess(image), text))
        if limit is not None and len(pairs) >= limit:
            break
    if not pairs:
        raise ValueError(f"manifest {manifest}: no readable kept image-text pair")
    return pairs


@torch.no_grad()
def retrieval_metrics(
    model: DalipModel,
    tokenizer: Any,
    pairs: Sequence[tuple[torch.Tensor, str]],
    lambdas: tuple[float, float] = (1.0, 1.0),
    batch_size: int = 64,
    device: str = "cpu",
) -> dict[str, dict[str, float]]:
    """Recall@k and ranks for the ``f``, ``z`` and combined scores; pair ``i``'s image matches caption ``i``."""
    model.eval()
    feats: dict[str, list[torch.Tensor]] = {"image_f": [], "image_z": [], "text_f": [], "text_z": []}
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start : start + batch_size]
        images = torch.stack([image for image, _ in chunk]).to(device)
        text = tokenizer([caption for _, caption in chunk]).to(device)
        for name, value in model.encode(image=images, text=text, normalize=True).items():
            feats[name].append(value.float().cpu())
    emb = {name: torch.cat(values) for name, values in feats.items()}
    # The combined score lambda1 <f_i, f_t> + lambda2 <z_i, z_t> is one inner product of scaled concatenations.
    w1, w2 = math.sqrt(lambdas[0]), math.sqrt(lambdas[1])
    scores = {
        "f": (emb["image_f"], emb["text_f"]),
        "z": (emb["image_z"], emb["text_z"]),
        "both": (torch.cat([w1 * emb["image_f"], w2 * emb["image_z"]], 1),
                 torch.cat([w1 * emb["text_f"], w2 * emb["text_z"]], 1)),
    }  # fmt: skip
    return {name: {k: float(v) for k, v in get_clip_metrics(i, t, 1.0).items()} for name, (i, t) in scores.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dalip.retrieval", description=__doc__.split("\n")[0])
    add_model_arguments(p)
    p.add_argument("--manifest", required=True, help="held-out PlantMix manifest (its kept rows are the pairs)")
    p.add_argument("--caption", default="caption", help="'caption' or a caption_variants key")
    p.add_argument("--limit", type=int, default=None, help="at most this many pairs (the first, shard order)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    model, preprocess, tokenizer, model_name = load_model(args.checkpoint, args.model, args.pretrained, args.device)
    pairs = manifest_pairs(args.manifest, preprocess, args.caption, args.limit)
    results = retrieval_metrics(model, tokenizer, pairs, tuple(args.lambdas), args.batch_size, args.device)
    report = {"checkpoint": args.checkpoint, "model": model_name, "manifest": args.manifest, "caption": args.caption,
              "num_pairs": len(pairs), "lambdas": list(args.lambdas), "results": results}  # fmt: skip
    return write_report(report, args.output)


if __name__ == "__main__":
    main()
