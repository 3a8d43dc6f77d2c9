"""Held-out loss of a DALIP checkpoint on a manifest's kept rows: the per-domain metric the mixing law fits.

``python -m dalip.validate --checkpoint C --manifest plant=P general=G [--batch-size B] [--output out.json]``
loads the model once and, per named manifest, reads its kept rows in a fixed order (shard by shard, as the
manifest lists them), preprocesses them with the model's evaluation transform and averages the training loss
(the checkpoint's own alpha and loss variant) over full batches. The contrastive loss depends on the batch, so
the batch size is part of the metric: compare losses made with the same one. Ye et al. (2024) fit their mixing
laws on exactly this kind of per-domain validation loss.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
from pathlib import Path
from typing import Any

import open_clip
import torch
from PIL import Image

from dalip.bdc import MbdcConfig
from dalip.checkpoint import load_checkpoint
from dalip.data import IMAGE_EXTENSIONS, read_manifest, read_shards
from dalip.loss import DalipLoss
from dalip.model import DalipModel
from dalip.tiny import register_tiny_model

log = logging.getLogger("dalip.validate")


def load_for_validation(checkpoint: str, device: str = "cpu") -> tuple[Any, Any, Any, Any]:
    """The checkpoint's model (eval mode), evaluation transform, tokenizer and training loss."""
    register_tiny_model()
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config"]
    model, _, preprocess = DalipModel.create(cfg["model"], None, mbdc=MbdcConfig.from_saved(cfg["mbdc"]), device=device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    loss_fn = DalipLoss(cfg["alpha"], cfg["loss_variant"], tuple(cfg["lambdas"]))
    return model, preprocess, open_clip.get_tokenizer(cfg["model"]), loss_fn


def validation_loss(
    loaded: tuple[Any, Any, Any, Any], manifest: str, batch_size: int = 64, caption: str = "caption",
    device: str = "cpu",
) -> dict[str, Any]:  # fmt: skip
    """Mean loss over the manifest's kept rows in full batches (one short batch if there is no full one)."""
    model, preprocess, tokenizer, loss_fn = loaded
    selection = read_manifest(manifest, caption)
    losses: list[float] = []
    images: list[torch.Tensor] = []
    texts: list[str] = []
    skipped = 0
    with torch.no_grad():
        for sample in read_shards(selection.shards):
            text = selection.caption_of(sample)
            ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
            if text is None or ext is None:
                skipped += "__error__" in sample
                continue
            try:
                images.append(preprocess(Image.open(io.BytesIO(sample[ext])).convert("RGB")))
            except Exception:  # noqa: BLE001 - an undecodable image is skipped and counted, as in training
                skipped += 1
                continue
            texts.append(text)
            if len(images) == batch_size:
                losses.append(_batch_loss(model, loss_fn, tokenizer, images, texts, device))
                images, texts = [], []
        if not losses and len(images) > 1:
            losses.append(_batch_loss(model, loss_fn, tokenizer, images, texts, device))
    if not losses:
        raise ValueError(f"{manifest}: fewer than two readable kept rows; no loss to compute")
    return {
        "loss": sum(losses) / len(losses),
        "batches": len(losses),
        "batch_size": batch_size,
        "samples": selection.num_samples,
        "skipped": skipped,
        "manifest": str(manifest),
    }


def named(spec: str) -> tuple[str, str]:
    """``plant=path`` -> ("plant", path); a bare path is named after its file."""
    name, sep, path = spec.partition("=")
    return (name, path) if sep and "/" not in name else (Path(spec).stem, spec)


def _batch_loss(model, loss_fn, tokenizer, images, texts, device) -> float:
    out = model(torch.stack(images).to(device), tokenizer(texts).to(device))
    return float(loss_fn(out)["loss"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(prog="python -m dalip.validate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a dalip.train checkpoint (.pt)")
    p.add_argument("--manifest", required=True, nargs="+", help="NAME=PATH (or PATH) of held-out manifests")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--caption", default="caption")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output", help="write the JSON here too")
    a = p.parse_args(argv)
    loaded = load_for_validation(a.checkpoint, a.device)
    result = {"checkpoint": a.checkpoint}
    for name, path in map(named, a.manifest):
        result[name] = validation_loss(loaded, path, a.batch_size, a.caption, a.device)
    print(json.dumps(result, indent=2))
    if a.output:
        Path(a.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
