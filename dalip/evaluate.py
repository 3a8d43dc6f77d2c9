"""Zero-shot evaluation of a DALIP checkpoint: top-1/top-5 scored by ``f``, ``z`` or ``lambda1 f + lambda2 z``;
with ``--suite``, every dataset of a paper's table that is present locally (:mod:`dalip.suite`).

Class texts are the 80 OpenAI ImageNet templates, averaged per class (open_clip's
``build_zero_shot_classifier``). Images and classes come from a folder-per-class tree, or from the taxa of a
manifest that have no kept row (held out of training), read from its shards. Prints and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import open_clip
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch
from open_clip import OPENAI_IMAGENET_TEMPLATES, SIMPLE_IMAGENET_TEMPLATES, build_zero_shot_classifier
from torchvision.datasets import ImageFolder

from dalip.bdc import MbdcConfig
from dalip.checkpoint import load_checkpoint
from dalip.data import (
    COL_KEEP,
    COL_KEY,
    COL_SCIENTIFIC_NAME,
    COL_SHARD,
    COL_STATUS,
    decode_image,
    manifest_files,
    read_shards,
    resolve_shard,
)
from dalip.model import DalipModel
from dalip.precision import PRECISIONS, autocast_for
from dalip.suite import load_suite, open_dataset, table
from dalip.tiny import register_tiny_model

log = logging.getLogger("dalip.evaluate")
TEMPLATES = {"openai": OPENAI_IMAGENET_TEMPLATES, "simple": SIMPLE_IMAGENET_TEMPLATES}


class _SecondOrderText:
    """Presents ``z`` as ``encode_text`` so open_clip's classifier builder averages ``z`` class embeddings too."""

    def __init__(self, model: DalipModel) -> None:
        self.model = model

    def encode_text(self, text: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        return self.model.encode(text=text, normalize=normalize)["text_z"]


def load_model(
    checkpoint: str | None, model_name: str | None = None, pretrained: str | None = None, device: str = "cpu"
) -> tuple[DalipModel, Any, Any, str]:
    """A DALIP training checkpoint, or (no checkpoint) a plain open_clip model whose ``z`` head is untrained."""
    register_tiny_model()
    if checkpoint:
        ckpt = load_checkpoint(checkpoint)
        cfg = ckpt["config"]
        model_name = cfg["model"]
        model, _, preprocess = DalipModel.create(
            model_name, None, mbdc=MbdcConfig.from_saved(cfg["mbdc"]), device=device
        )
        model.load_state_dict(ckpt["model"])
    elif model_name:
        model, _, preprocess = DalipModel.create(model_name, pretrained, device=device)
    else:
        raise ValueError("give --checkpoint, or --model (and --pretrained) for a plain open_clip model")
    return model.eval(), preprocess, open_clip.get_tokenizer(model_name), model_name


def folder_dataset(root: str | Path, preprocess: Any) -> tuple[list[str], Sequence[tuple[torch.Tensor, int]]]:
    """Class names (folder names, ``_`` read as a space) and the images of a folder-per-class tree."""
    dataset = ImageFolder(str(root), transform=preprocess)
    return [c.replace("_", " ") for c in dataset.classes], dataset


def heldout_taxa(manifest: str | Path) -> list[str]:
    """Taxa of a manifest with downloaded rows but no kept row: never seen in training."""
    seen, kept = set(), set()
    for fs, path in manifest_files(manifest):
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=[COL_SCIENTIFIC_NAME, COL_KEEP, COL_STATUS])
        for row in table.filter(pc.equal(table[COL_STATUS], "ok")).to_pylist():
            if row[COL_SCIENTIFIC_NAME]:
                seen.add(row[COL_SCIENTIFIC_NAME])
                if row[COL_KEEP]:
                    kept.add(row[COL_SCIENTIFIC_NAME])
    return sorted(seen - kept)


def manifest_dataset(
    manifest: str | Path, taxa: Sequence[str], preprocess: Any
) -> tuple[list[str], list[tuple[torch.Tensor, int]]]:
    """The downloaded images of the given taxa, read from the manifest's shards; the class name is the taxon."""
    label_of = {t: i for i, t in enumerate(taxa)}
    wanted: dict[tuple[str, str], int] = {}
    for fs, path in manifest_files(manifest):
        with fs.open(path, "rb") as f:
            table = pq.read_table(f, columns=[COL_SCIENTIFIC_NAME, COL_STATUS, COL_SHARD, COL_KEY])
        for row in table.filter(pc.equal(table[COL_STATUS], "ok")).to_pylist():
            if row[COL_SCIENTIFIC_NAME] in label_of and row[COL_SHARD]:
                wanted[(resolve_shard(fs, path, row[COL_SHARD]), row[COL_KEY])] = label_of[row[COL_SCIENTIFIC_NAME]]
    items = []
    for sample in read_shards(sorted({url for url, _ in wanted})):
        label = wanted.get((sample.get("__url__"), sample.get("__key__")))
        if label is None:
            continue
        try:
            image = decode_image(sample)
        except (OSError, ValueError) as exn:
            log.warning("skipping undecodable image %s:%s (%s)", sample["__url__"], sample["__key__"], exn)
            continue
        items.append((preprocess(image), label))
    if not items:
        raise ValueError(f"manifest {manifest}: no readable image of the taxa {list(taxa)[:10]}")
    return list(taxa), items


@torch.no_grad()
def zero_shot(
    model: DalipModel,
    tokenizer: Any,
    classnames: Sequence[str],
    dataset: Sequence[tuple[torch.Tensor, int]],
    lambdas: tuple[float, float] = (1.0, 1.0),
    templates: Sequence[Any] = OPENAI_IMAGENET_TEMPLATES,
    batch_size: int = 64,
    device: str = "cpu",
    workers: int = 0,
    precision: str = "amp",
) -> dict[str, dict[str, float]]:
    """Top-1/top-5 accuracy (%) scored by ``f``, by ``z`` and by ``lambda1 * sim(f) + lambda2 * sim(z)``; images
    are decoded by ``workers`` loader processes, a batch at a time."""
    weights_f = build_zero_shot_classifier(model, tokenizer, classnames, templates, device=device)
    weights_z = build_zero_shot_classifier(_SecondOrderText(model), tokenizer, classnames, templates, device=device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, num_workers=workers)
    k = min(5, len(classnames))
    correct = {name: [0, 0] for name in ("f", "z", "both")}
    total = 0
    for images, labels in loader:
        with autocast_for(precision, device):
            emb = {name: value.float() for name, value in model.encode(image=images.to(device), normalize=True).items()}
        sim_f, sim_z = emb["image_f"] @ weights_f, emb["image_z"] @ weights_z
        labels = labels.to(device)
        for name, logits in (("f", sim_f), ("z", sim_z), ("both", lambdas[0] * sim_f + lambdas[1] * sim_z)):
            top = logits.topk(k, dim=-1).indices
            correct[name][0] += (top[:, 0] == labels).sum().item()
            correct[name][1] += (top == labels[:, None]).any(dim=-1).sum().item()
        total += len(labels)
    return {name: {"top1": 100.0 * c1 / total, "top5": 100.0 * c5 / total} for name, (c1, c5) in correct.items()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m dalip.evaluate", description=__doc__)
    add_model_arguments(p)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--classes", help="folder-per-class image tree")
    src.add_argument("--manifest", help="PlantMix manifest; classes are its held-out taxa (or --taxa)")
    src.add_argument("--suite", help="a suite YAML (manifests/eval/dalip-paper.yaml): every dataset found locally")
    p.add_argument("--data-root", default=".", help="with --suite: the folder its relative dataset roots are in")
    p.add_argument("--taxa", nargs="+", help="with --manifest: the taxa to classify among")
    p.add_argument("--score", choices=("f", "z", "both"), default="both", help="which score the top-level fields use")
    p.add_argument("--templates", choices=tuple(TEMPLATES), default="openai")
    return p.parse_args(argv)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    """The options every evaluation entry point shares: which model, how to score, where to run and write."""
    p.add_argument("--checkpoint", help="a dalip.train checkpoint (.pt)")
    p.add_argument("--model", help="without --checkpoint: an open_clip model name")
    p.add_argument("--pretrained", help="without --checkpoint: open_clip tag or local weights")
    p.add_argument("--lambdas", type=float, nargs=2, default=(1.0, 1.0), metavar=("L1", "L2"))
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--workers", type=int, default=2, help="loader workers decoding images")
    p.add_argument("--precision", choices=PRECISIONS, default="amp", help="amp: fp16 on GPU; amp_bf16: bf16")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--output", help="write the JSON here too")


def write_report(report: dict[str, Any], output: str | None, printed: str | None = None) -> dict[str, Any]:
    """Print ``printed`` (default: the report as JSON) and write the JSON to ``output`` when given."""
    text = json.dumps(report, indent=2)
    print(printed if printed is not None else text)
    if output:
        Path(output).write_text(text + "\n")
    return report


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    model, preprocess, tokenizer, model_name = load_model(args.checkpoint, args.model, args.pretrained, args.device)
    if args.suite:
        return _run_suite(args, model, preprocess, tokenizer, model_name)
    if args.classes:
        classnames, dataset = folder_dataset(args.classes, preprocess)
    else:
        taxa = args.taxa or heldout_taxa(args.manifest)
        if not taxa:
            raise ValueError(f"manifest {args.manifest}: no held-out taxa (every taxon has a kept row); give --taxa")
        classnames, dataset = manifest_dataset(args.manifest, taxa, preprocess)
    results = zero_shot(
        model, tokenizer, classnames, dataset, tuple(args.lambdas), TEMPLATES[args.templates], args.batch_size,
        args.device, args.workers, args.precision,
    )  # fmt: skip
    report = {
        "checkpoint": args.checkpoint,
        "model": model_name,
        "source": args.classes or args.manifest,
        "num_classes": len(classnames),
        "num_images": len(dataset),
        "templates": args.templates,
        "score": args.score,
        "lambdas": list(args.lambdas),
        "top1": results[args.score]["top1"],
        "top5": results[args.score]["top5"],
        "results": results,
    }
    return write_report(report, args.output)


def _run_suite(args: argparse.Namespace, model: DalipModel, preprocess: Any, tokenizer: Any, model_name: str) -> dict:
    """Every dataset of the suite whose files are here; the paper's table layout printed, JSON returned."""
    suite = load_suite(args.suite)
    results, skipped = {}, []
    for dataset in suite.datasets:
        try:
            classnames, images = open_dataset(suite, dataset, Path(args.data_root), preprocess)
        except FileNotFoundError as exc:
            log.info("skipping %s", exc)
            skipped.append(dataset.name)
            continue
        log.info("%s: %d classes, %d images", dataset.name, len(classnames), len(images))
        results[dataset.name] = zero_shot(
            model, tokenizer, classnames, images, tuple(args.lambdas), TEMPLATES[args.templates], args.batch_size,
            args.device, args.workers, args.precision,
        )  # fmt: skip
    rendered = table(suite, results, skipped)
    report = {"suite": suite.name, "checkpoint": args.checkpoint, "model": model_name, "lambdas": list(args.lambdas),
              "templates": args.templates, "results": results, "skipped": skipped, "paper": suite.paper,
              "table": rendered}  # fmt: skip
    return write_report(report, args.output, printed=rendered)


if __name__ == "__main__":
    main()
