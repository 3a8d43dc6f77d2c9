"""A synthetic fine-grained image-text task: a tiny DALIP trained for about half a minute on CPU must classify
20 colour x texture classes zero-shot (80 OpenAI templates, unseen images) well above chance (5%)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from open_clip import OPENAI_IMAGENET_TEMPLATES
from PIL import Image

from dalip.evaluate import main as evaluate
from dalip.train import main as train
from tests.dalip.conftest import class_names, pattern_image, write_dataset


def _caption(name: str, i: int, rng: np.random.Generator) -> str:
    # The caption names the class inside a varied sentence, so the text tower cannot key on a fixed string.
    return OPENAI_IMAGENET_TEMPLATES[int(rng.integers(len(OPENAI_IMAGENET_TEMPLATES)))](name)


def _eval_tree(root: Path, per_class: int = 8) -> Path:
    rng = np.random.default_rng(123)  # images never seen in training
    for name in class_names():
        folder = root / name.replace(" ", "_")
        folder.mkdir(parents=True)
        for j in range(per_class):
            Image.fromarray(pattern_image(*name.split(), rng).astype(np.uint8)).save(folder / f"{j}.png")
    return root


@pytest.mark.slow
def test_tiny_dalip_learns_a_fine_grained_task_zero_shot(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path / "train", n_shards=4, per_shard=250, seed=1, captions=_caption)
    summary = train([
        "--manifest", str(manifest), "--output-dir", str(tmp_path / "run"), "--model", "DALIP-Tiny",
        "--epochs", "4", "--batch-size", "50", "--lr", "2e-3", "--warmup", "10", "--precision", "fp32",
        "--workers", "1", "--mbdc-dim", "16", "--shuffle-buffer", "250", "--save-every", "1000", "--seed", "0",
    ])  # fmt: skip
    assert summary["step"] == 80
    report = evaluate(["--checkpoint", summary["checkpoint"], "--classes", str(_eval_tree(tmp_path / "eval"))])
    chance = 100 / 20
    assert report["num_classes"] == 20 and report["num_images"] == 160
    assert report["results"]["f"]["top1"] > 4 * chance, report["results"]
    assert report["results"]["both"]["top1"] > 4 * chance, report["results"]
    assert report["results"]["z"]["top1"] > 2 * chance, report["results"]
