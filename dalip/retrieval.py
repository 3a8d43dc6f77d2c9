"""Image-text retrieval recall@k of a DALIP checkpoint on held-out pairs, as open_clip reports it.

``python -m dalip.retrieval --checkpoint C --manifest M [--caption dalip] [--limit N] [--output out.json]``
reads the kept rows of ``M`` (a held-out manifest: pairs never trained on) from their shards, embeds images and
captions and scores every image against every caption by ``f``, by ``z`` and by ``lambda1 f + lambda2 z``. The
metrics are open_clip_train's own (``get_clip_metrics``: image->text and text->image mean / median rank and
R@1/5/10), so the numbers compare with open_clip's zero-shot retrieval reports.
"""

from __future__ import annotations

import argparse
import logging
import math
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from open_clip_train.train import get_clip_metrics

from dalip.data import read_manifest
from dalip.evaluate import add_model_arguments, load_model, write_report
from dalip.heldout import HeldOutCount, kept_batches
from dalip.model import DalipModel
from dalip.precision import autocast_for

log = logging.getLogger("dalip.retrieval")


@torch.no_grad()
def retrieval_metrics(
    model: DalipModel,
    tokenizer: Any,
    batches: Iterable[tuple[torch.Tensor, Sequence[str]]],
    lambdas: tuple[float, float] = (1.0, 1.0),
    device: str = "cpu",
    precision: str = "amp",
) -> dict[str, dict[str, float]]:
    """Recall@k and ranks for the ``f``, ``z`` and combined scores over ``(images, captions)`` batches; pair
    ``i``'s image matches caption ``i``. Only the embeddings are kept, not the images."""
    model.eval()
    feats: dict[str, list[torch.Tensor]] = {"image_f": [], "image_z": [], "text_f": [], "text_z": []}
    for images, captions in batches:
        text = tokenizer(list(captions)).to(device)
        with autocast_for(precision, device):
            encoded = model.encode(image=images.to(device), text=text, normalize=True)
        for name, value in encoded.items():
            feats[name].append(value.float().cpu())
    if not feats["image_f"]:
        raise ValueError("no readable image-text pair to score")
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
    count = HeldOutCount()
    selection = read_manifest(args.manifest, args.caption)
    batches = kept_batches(selection, preprocess, args.batch_size, args.workers, args.limit, count)
    results = retrieval_metrics(model, tokenizer, batches, tuple(args.lambdas), args.device, args.precision)
    report = {"checkpoint": args.checkpoint, "model": model_name, "manifest": args.manifest, "caption": args.caption,
              "num_pairs": count.pairs, "undecodable": count.undecodable, "lambdas": list(args.lambdas),
              "results": results}  # fmt: skip
    return write_report(report, args.output)


if __name__ == "__main__":
    main()
