"""An evaluation suite: the zero-shot datasets of a paper's table, run where they exist locally, printed beside it.

A suite YAML (``manifests/eval/dalip-paper.yaml``) lists datasets, each with a ``name``, a ``domain`` (general or
plant), a ``root`` (relative paths are relative to ``--data-root``) and a ``kind``:

- ``imagenet``: an ImageFolder of the validation set (one folder per WordNet id, e.g. ``val/n01440764/``), class
  texts from open_clip's ImageNet class names (sorted wnids are open_clip's order);
- ``cifar100``, ``oxford_pets``, ``stanford_cars``, ``sun397``: torchvision's dataset class on ``root`` (its own
  files, never downloaded here; the test split where there is one), class texts from its ``classes``
  (``_`` read as a space);
- ``folder``: a folder-per-class tree (the plant sets: PlantNet, Fungi, PlantVillage, Medicinal Leaf, PlantDoc,
  Meta-Album "Mini" layout), class texts from the folder names, or from ``classnames``: a CSV ``folder,name``
  beside the suite (e.g. folder ``0042`` -> ``Quercus robur``).

``paper`` holds the published top-1 numbers per method and dataset. The report lists every dataset with ``f``,
``z`` and ``f+z`` top-1, the general and plant means over the datasets present, the paper's numbers beside them,
and the datasets skipped because their files are not there.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from open_clip import IMAGENET_CLASSNAMES
from torchvision import datasets
from torchvision.datasets import ImageFolder

KINDS = ("imagenet", "cifar100", "oxford_pets", "stanford_cars", "sun397", "folder")
DOMAINS = ("general", "plant")


@dataclass
class SuiteDataset:
    name: str
    domain: str
    kind: str
    root: str
    classnames: str | None = None  # folder kind: CSV folder,name beside the suite file


@dataclass
class Suite:
    name: str
    datasets: list[SuiteDataset]
    paper: dict[str, dict[str, float]] = field(default_factory=dict)  # method -> dataset -> top-1 %
    folder: Path = Path(".")  # where the suite file is (classnames files are beside it)


def load_suite(path: str | Path) -> Suite:
    """Parse and check a suite YAML; errors name the file and the entry."""
    path = Path(path)
    document = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(document, dict) or not isinstance(document.get("datasets"), list):
        raise ValueError(f"{path}: expected a mapping with a 'datasets' list")
    entries = []
    for i, entry in enumerate(document["datasets"]):
        where = f"{path}: datasets[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: expected a mapping")
        unknown = sorted(set(entry) - {"name", "domain", "kind", "root", "classnames"})
        if unknown:
            raise ValueError(f"{where}: unknown key(s) {unknown}")
        dataset = SuiteDataset(**entry)
        if dataset.kind not in KINDS:
            raise ValueError(f"{where}: kind {dataset.kind!r} unknown; expected one of {', '.join(KINDS)}")
        if dataset.domain not in DOMAINS:
            raise ValueError(f"{where}: domain {dataset.domain!r} unknown; expected general or plant")
        entries.append(dataset)
    return Suite(str(document.get("name", path.stem)), entries, dict(document.get("paper") or {}), path.parent)


def open_dataset(suite: Suite, dataset: SuiteDataset, data_root: Path, preprocess: Any) -> tuple[list[str], Any]:
    """``(class texts, dataset of (image, label))``; ``FileNotFoundError`` when its files are not there."""
    root = Path(dataset.root) if Path(dataset.root).is_absolute() else data_root / dataset.root
    if not root.exists():
        raise FileNotFoundError(f"{dataset.name}: {root} does not exist")
    kind = dataset.kind
    try:
        if kind == "imagenet":
            images = ImageFolder(str(root), transform=preprocess)
            if len(images.classes) != len(IMAGENET_CLASSNAMES):
                raise ValueError(f"{dataset.name}: {root} has {len(images.classes)} class folders, expected 1000")
            return list(IMAGENET_CLASSNAMES), images
        if kind == "folder":
            images = ImageFolder(str(root), transform=preprocess)
            names = _classnames(suite.folder / dataset.classnames) if dataset.classnames else {}
            return [names.get(c, c.replace("_", " ")) for c in images.classes], images
        images = {
            "cifar100": lambda: datasets.CIFAR100(str(root), train=False, transform=preprocess),
            "oxford_pets": lambda: datasets.OxfordIIITPet(str(root), split="test", transform=preprocess),
            "stanford_cars": lambda: datasets.StanfordCars(str(root), split="test", transform=preprocess),
            "sun397": lambda: datasets.SUN397(str(root), transform=preprocess),
        }[kind]()
    except RuntimeError as exc:  # torchvision: "Dataset not found or corrupted"
        raise FileNotFoundError(f"{dataset.name}: {exc}") from None
    return [c.replace("_", " ") for c in images.classes], images


def _classnames(path: Path) -> dict[str, str]:
    with open(path, newline="", encoding="utf-8") as f:
        return {row["folder"]: row["name"] for row in csv.DictReader(f)}


def table(suite: Suite, results: dict[str, dict[str, dict[str, float]]], skipped: Sequence[str]) -> str:
    """The paper's layout: per dataset ``f``, ``z``, ``f+z`` top-1, then the means, the paper's numbers beside."""
    methods = list(suite.paper)
    head = ["dataset", "domain", "f", "z", "f+z", *(f"paper {m}" for m in methods)]
    rows = []
    for dataset in suite.datasets:
        got = results.get(dataset.name)
        cells = [f"{got[s]['top1']:.1f}" if got else "-" for s in ("f", "z", "both")]
        rows.append([dataset.name, dataset.domain, *cells,
                     *(_number(suite.paper[m].get(dataset.name)) for m in methods)])  # fmt: skip
    for domain in DOMAINS:
        names = [d.name for d in suite.datasets if d.domain == domain]
        present = [n for n in names if n in results]
        means = [_mean([results[n][s]["top1"] for n in present]) for s in ("f", "z", "both")]
        paper = [_mean([suite.paper[m][n] for n in names if n in suite.paper[m]]) for m in methods]
        rows.append([f"{domain} mean ({len(present)}/{len(names)})", domain, *map(_number, means),
                     *map(_number, paper)])  # fmt: skip
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) for r in [head, *rows]]
    if skipped:
        lines.append(f"skipped (files not found): {', '.join(skipped)}")
    return "\n".join(lines)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
