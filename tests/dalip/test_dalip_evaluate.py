"""`python -m dalip.evaluate`: zero-shot JSON from a folder tree and from a manifest's held-out taxa."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from dalip.evaluate import heldout_taxa, main
from dalip.train import main as train_main
from tests.dalip.conftest import class_names, pattern_image, write_dataset


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("eval")
    manifest = write_dataset(root, n_shards=2, per_shard=16)
    summary = train_main([
        "--manifest", str(manifest), "--output-dir", str(root / "run"), "--model", "DALIP-Tiny",
        "--batch-size", "8", "--max-steps", "2", "--warmup", "1", "--precision", "fp32", "--workers", "0",
        "--mbdc-dim", "6",
    ])  # fmt: skip
    return summary["checkpoint"]


def test_folder_tree_gives_top1_top5_for_f_z_and_both(checkpoint: str, tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    names = class_names()[:7]
    for name in names:
        folder = tmp_path / "classes" / name.replace(" ", "_")
        folder.mkdir(parents=True)
        for j in range(3):
            Image.fromarray(pattern_image(*name.split(), rng).astype(np.uint8)).save(folder / f"{j}.png")
    out = tmp_path / "zs.json"
    report = main(["--checkpoint", checkpoint, "--classes", str(tmp_path / "classes"), "--output", str(out),
                   "--score", "f"])  # fmt: skip
    assert json.loads(out.read_text()) == report
    assert report["num_classes"] == 7 and report["num_images"] == 21 and report["model"] == "DALIP-Tiny"
    assert set(report["results"]) == {"f", "z", "both"}
    assert report["top1"] == report["results"]["f"]["top1"]
    for r in report["results"].values():
        assert 0 <= r["top1"] <= r["top5"] <= 100
        assert r["top1"] * 21 / 100 == pytest.approx(round(r["top1"] * 21 / 100))  # a whole number of hits
    # lambdas (1, 0) and (0, 1) turn the combined score into f alone and z alone.
    only_f = main(["--checkpoint", checkpoint, "--classes", str(tmp_path / "classes"), "--lambdas", "1", "0"])
    only_z = main(["--checkpoint", checkpoint, "--classes", str(tmp_path / "classes"), "--lambdas", "0", "1"])
    assert only_f["results"]["both"] == only_f["results"]["f"] == report["results"]["f"]
    assert only_z["results"]["both"] == only_z["results"]["z"] == report["results"]["z"]


def test_manifest_heldout_taxa(checkpoint: str, tmp_path: Path) -> None:
    names = class_names()
    held = names[:18:3]  # six taxa, so top-5 is not trivially 100
    dropped = tuple(i for i in range(40) if names[i % len(names)] in held)  # every row of those taxa is dropped
    manifest = write_dataset(tmp_path, n_shards=2, per_shard=20, dropped=dropped)
    assert heldout_taxa(manifest) == sorted(held)
    report = main(["--checkpoint", checkpoint, "--manifest", str(manifest), "--templates", "simple"])
    assert report["num_classes"] == 6 and report["num_images"] == len(dropped) == 12
    # The same images as a folder-per-class tree: the manifest reader must pair each image with its own taxon.
    folders = _held_out_images_as_folders(manifest, tmp_path / "classes")
    by_folder = main(["--checkpoint", checkpoint, "--classes", str(folders), "--templates", "simple"])
    assert by_folder["num_images"] == 12 and report["results"] == by_folder["results"]
    explicit = main(["--checkpoint", checkpoint, "--manifest", str(manifest), "--taxa", "crimson striped",
                     "olive banded", "orange checkered"])  # fmt: skip
    assert explicit["num_classes"] == 3 and explicit["num_images"] == 6


def _held_out_images_as_folders(manifest: Path, root: Path) -> Path:
    for row in pq.read_table(manifest).to_pylist():
        if not row["keep"]:
            folder = root / row["scientific_name"].replace(" ", "_")
            folder.mkdir(parents=True, exist_ok=True)
            with tarfile.open(manifest.parent / row["shard"]) as tar:
                (folder / f"{row['key']}.jpg").write_bytes(tar.extractfile(f"{row['key']}.jpg").read())
    return root


class _Fixed:
    """A stand-in model: ``f`` pairs image i with caption i, ``z`` pairs image i with caption i + 1."""

    def eval(self):
        return self

    def encode(self, image, text, normalize=True):
        import torch.nn.functional as F

        i = image[:, 0, 0, 0].long()
        t = text.long()
        n = 4
        return {
            "image_f": F.one_hot(i, n).float(), "text_f": F.one_hot(t, n).float(),
            "image_z": F.one_hot((i + 1) % n, n).float(), "text_z": F.one_hot(t, n).float(),
        }  # fmt: skip


def test_retrieval_recall_scores_each_image_against_every_caption_by_f_z_and_both() -> None:
    from dalip.retrieval import retrieval_metrics

    pairs = [(torch.full((3, 2, 2), float(i)), str(i)) for i in range(4)]
    tokenizer = lambda texts: torch.tensor([int(t) for t in texts])  # noqa: E731
    batches = [(torch.stack([image for image, _ in pairs[:3]]), ["0", "1", "2"]), (pairs[3][0][None], ["3"])]
    f_only = retrieval_metrics(_Fixed(), tokenizer, batches, lambdas=(1.0, 0.0))
    assert f_only["f"]["image_to_text_R@1"] == 1.0 and f_only["f"]["text_to_image_R@1"] == 1.0
    assert f_only["z"]["image_to_text_R@1"] == 0.0 and f_only["z"]["image_to_text_mean_rank"] > 1
    assert f_only["both"]["image_to_text_R@1"] == 1.0  # lambda2 = 0: the combined score is f's
    z_only = retrieval_metrics(_Fixed(), tokenizer, batches, lambdas=(0.0, 1.0))
    assert z_only["both"]["image_to_text_R@1"] == 0.0 and z_only["both"]["image_to_text_R@5"] == 1.0


def test_retrieval_cli_on_a_manifest(tmp_path) -> None:
    from dalip.retrieval import main as retrieval_main
    from dalip.train import main as train_main
    from tests.dalip.conftest import write_dataset

    data = write_dataset(tmp_path / "data", n_shards=1, per_shard=24)
    train_main(["--manifest", str(data), "--output-dir", str(tmp_path / "run"), "--model", "DALIP-Tiny",
                "--batch-size", "8", "--max-steps", "1", "--precision", "fp32", "--workers", "0",
                "--mbdc-dim", "6"])  # fmt: skip
    checkpoint = str(tmp_path / "run" / "checkpoints" / "step_00000001.pt")
    report = retrieval_main(["--checkpoint", checkpoint, "--manifest", str(data), "--limit", "16",
                             "--output", str(tmp_path / "r.json")])  # fmt: skip
    assert report["num_pairs"] == 16 and set(report["results"]) == {"f", "z", "both"}
    assert 0.0 <= report["results"]["both"]["image_to_text_R@10"] <= 1.0
    assert json.loads((tmp_path / "r.json").read_text())["results"] == report["results"]


def test_the_suite_runs_the_datasets_present_and_prints_the_papers_layout(tmp_path) -> None:
    """Two folder datasets present (one with a class-name map), torchvision ones absent: the table has f, z,
    f+z per dataset, the means over what ran and the paper's numbers; the rest is listed as skipped."""
    from dalip.suite import load_suite, open_dataset
    from tests.dalip.conftest import write_dataset

    data = write_dataset(tmp_path / "data", n_shards=1, per_shard=16)
    train_main(["--manifest", str(data), "--output-dir", str(tmp_path / "run"), "--model", "DALIP-Tiny",
                "--batch-size", "8", "--max-steps", "1", "--precision", "fp32", "--workers", "0",
                "--mbdc-dim", "6"])  # fmt: skip
    root = tmp_path / "eval"
    for folder, classes in (("plants", ["0001", "0002"]), ("things", ["red_thing", "blue_thing"])):
        for k, name in enumerate(classes):
            (root / folder / name).mkdir(parents=True)
            for i in range(3):
                Image.fromarray(np.full((32, 32, 3), 40 * k + i, np.uint8)).save(root / folder / name / f"{i}.png")
    (tmp_path / "names.csv").write_text("folder,name\n0001,Quercus robur\n0002,Iris tectorum\n")
    suite = tmp_path / "suite.yaml"
    suite.write_text(
        "name: t\npaper: {DALIP: {things: 50.0, cifar100: 60.0, plants: 90.0}}\ndatasets:\n"
        "  - {name: things, domain: general, kind: folder, root: things}\n"
        "  - {name: cifar100, domain: general, kind: cifar100, root: cifar100}\n"
        "  - {name: plants, domain: plant, kind: folder, root: plants, classnames: names.csv}\n"
    )
    checkpoint = str(tmp_path / "run" / "checkpoints" / "step_00000001.pt")
    report = main(["--checkpoint", checkpoint, "--suite", str(suite), "--data-root", str(root), "--batch-size", "4"])
    assert set(report["results"]) == {"things", "plants"} and report["skipped"] == ["cifar100"]
    assert set(report["results"]["plants"]) == {"f", "z", "both"}
    lines = report["table"].splitlines()
    assert lines[0].split() == ["dataset", "domain", "f", "z", "f+z", "paper", "DALIP"]
    assert lines[2].split()[:2] == ["cifar100", "general"] and lines[2].split()[2:5] == ["-", "-", "-"]
    general_mean = next(line for line in lines if line.startswith("general mean (1/2)"))
    assert general_mean.split()[-1] == "55.0"  # the paper's mean over its general sets
    assert lines[-1] == "skipped (files not found): cifar100"
    # The same through the command line a user types (the module's own __main__).
    cli = subprocess.run(
        [sys.executable, "-m", "dalip.evaluate", "--checkpoint", checkpoint, "--suite", str(suite), "--data-root",
         str(root), "--batch-size", "4", "--output", str(tmp_path / "table.json")],
        cwd=ROOT_SUITE.parents[2], env={**os.environ, "PYTHONPATH": str(ROOT_SUITE.parents[2])}, capture_output=True,
        text=True, timeout=300,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert json.loads((tmp_path / "table.json").read_text())["results"] == report["results"]
    parsed = load_suite(suite)
    assert open_dataset(parsed, parsed.datasets[2], root, None)[0] == ["Quercus robur", "Iris tectorum"]
    assert open_dataset(parsed, parsed.datasets[0], root, None)[0] == ["blue thing", "red thing"]
    assert [d.name for d in load_suite(ROOT_SUITE).datasets][-5:] == [
        "plantnet", "fungi", "plantvillage", "medicinal_leaf", "plantdoc",
    ]  # fmt: skip


ROOT_SUITE = Path(__file__).resolve().parents[2] / "manifests" / "eval" / "dalip-paper.yaml"
