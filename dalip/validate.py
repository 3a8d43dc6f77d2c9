"""Held-out loss of a DALIP checkpoint on a manifest's kept rows: the per-domain metric the mixing law fits.

``python -m dalip.validate --checkpoint C --manifest plant=P general=G [--batch-size B] [--output out.json]``
loads the model once and, per named manifest, reads its kept rows in a fixed order (shard by shard, as the
manifest lists them), preprocesses them with the model's evaluation transform and averages the training loss
(the checkpoint's own alpha and loss variant) over full batches. The contrastive loss depends on the batch, so
the batch size is part of the metric: compare losses made with the same one (the batches do not depend on
``--workers``). Ye et al. (2024) fit their mixing laws on exactly this kind of per-domain validation loss.

The JSON records the checkpoint, its model and alpha, the training mixture (each domain's share of the kept rows
of the manifest it was trained on, when that is still readable; null for release shards), and per named manifest
its domain, loss, batches, batch size, samples and skipped images.
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import open_clip
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from dalip.bdc import MbdcConfig
from dalip.checkpoint import load_checkpoint
from dalip.data import COL_DOMAIN, COL_KEEP, manifest_files, read_manifest
from dalip.heldout import HeldOutCount, kept_batches
from dalip.loss import DalipLoss
from dalip.model import DalipModel
from dalip.precision import PRECISIONS, autocast_for
from dalip.tiny import register_tiny_model

log = logging.getLogger("dalip.validate")


@dataclass
class Validator:
    """A checkpoint ready to score held-out pairs: model (eval mode), evaluation transform, tokenizer, its own
    training loss, and the training config it was saved with."""

    model: Any
    preprocess: Any
    tokenizer: Any
    loss_fn: DalipLoss
    config: dict[str, Any]


def load_for_validation(checkpoint: str, device: str = "cpu") -> Validator:
    register_tiny_model()
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config"]
    model, _, preprocess = DalipModel.create(cfg["model"], None, mbdc=MbdcConfig.from_saved(cfg["mbdc"]), device=device)
    model.load_state_dict(ckpt["model"])
    model.eval()
    loss_fn = DalipLoss(cfg["alpha"], cfg["loss_variant"], tuple(cfg["lambdas"]))
    return Validator(model, preprocess, open_clip.get_tokenizer(cfg["model"]), loss_fn, cfg)


def validation_loss(
    validator: Validator, manifest: str, batch_size: int = 64, caption: str = "caption", device: str = "cpu",
    workers: int = 2, precision: str = "amp",
) -> dict[str, Any]:  # fmt: skip
    """Mean loss over the manifest's kept rows in full batches (one short batch if there is no full one); the
    batches are the same for any ``workers``; ``precision`` as in training (``dalip.precision``)."""
    selection = read_manifest(manifest, caption)
    count = HeldOutCount()
    losses: list[float] = []
    short: tuple[torch.Tensor, list[str]] | None = None
    autocast = autocast_for(precision, device)
    with torch.no_grad():
        for images, texts in kept_batches(selection, validator.preprocess, batch_size, workers, count=count):
            if len(texts) < batch_size:
                short = (images, texts)
                continue
            with autocast:
                losses.append(_batch_loss(validator, images, texts, device))
        if not losses and short is not None and len(short[1]) > 1:
            with autocast:
                losses.append(_batch_loss(validator, *short, device))
    if not losses:
        raise ValueError(f"{manifest}: fewer than two readable kept rows; no loss to compute")
    return {
        "loss": sum(losses) / len(losses),
        "batches": len(losses),
        "batch_size": batch_size,
        "samples": selection.num_samples,
        "skipped": count.undecodable,
        "manifest": str(manifest),
    }


def training_mixture(config: dict[str, Any]) -> dict[str, Any] | None:
    """The share of each domain among the kept rows the checkpoint was trained on, when its training manifest is
    still readable and has a ``domain`` column (counted in Arrow batches); else None."""
    if not config.get("manifest"):
        return None  # trained on release shards: the mixture is the release's, not recorded per row here
    counts: dict[str, int] = {}
    try:
        for fs, path in manifest_files(config["manifest"]):
            with fs.open(path, "rb") as f:
                parquet = pq.ParquetFile(f)
                if COL_DOMAIN not in parquet.schema_arrow.names:
                    return None
                for batch in parquet.iter_batches(columns=[COL_KEEP, COL_DOMAIN]):
                    kept = batch.filter(pc.fill_null(batch[COL_KEEP], False))[COL_DOMAIN]
                    for item in pc.value_counts(kept).to_pylist():
                        counts[str(item["values"])] = counts.get(str(item["values"]), 0) + item["counts"]
    except (OSError, ValueError) as exn:
        log.info("training mixture unknown: %s", exn)
        return None
    total = sum(counts.values())
    return {"rows": counts, "share": {d: n / total for d, n in sorted(counts.items())}} if total else None


def named(spec: str) -> tuple[str, str]:
    """``plant=path`` -> ("plant", path); a bare path is named after its file."""
    name, sep, path = spec.partition("=")
    return (name, path) if sep and "/" not in name else (Path(spec).stem, spec)


def _batch_loss(validator: Validator, images: torch.Tensor, texts: list[str], device: str) -> float:
    out = validator.model(images.to(device), validator.tokenizer(texts).to(device))
    return float(validator.loss_fn(out)["loss"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    p = argparse.ArgumentParser(prog="python -m dalip.validate", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a dalip.train checkpoint (.pt)")
    p.add_argument("--manifest", required=True, nargs="+", help="NAME=PATH (or PATH) of held-out manifests")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--caption", default="caption")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--workers", type=int, default=2, help="loader workers (the batches do not depend on them)")
    p.add_argument("--precision", choices=PRECISIONS, default="amp", help="amp: fp16 on GPU; amp_bf16: bf16")
    p.add_argument("--output", help="write the JSON here too")
    a = p.parse_args(argv)
    validator = load_for_validation(a.checkpoint, a.device)
    result: dict[str, Any] = {
        "checkpoint": a.checkpoint,
        "model": validator.config["model"],
        "alpha": validator.config["alpha"],
        "training_mixture": training_mixture(validator.config),
    }
    for name, path in map(named, a.manifest):
        measured = validation_loss(validator, path, a.batch_size, a.caption, a.device, a.workers, a.precision)
        result[name] = {"domain": name, **measured}
    print(json.dumps(result, indent=2))
    if a.output:
        Path(a.output).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
