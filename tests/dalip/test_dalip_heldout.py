"""Held-out pairs for validation and retrieval: one fixed order whatever the loader workers, nothing kept but the
batch, and the validation JSON the mixing law reads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch
from torchvision.transforms.functional import pil_to_tensor

from dalip.data import read_manifest
from dalip.heldout import HeldOutCount, kept_batches
from dalip.train import main as train_main
from dalip.validate import main as validate_main
from tests.dalip.conftest import write_dataset


def _caption(name: str, i: int, rng) -> str:
    return f"sample {i} is {name}"


def test_batches_are_the_same_for_any_number_of_workers(tmp_path: Path) -> None:
    manifest = write_dataset(tmp_path, n_shards=3, per_shard=7, corrupt=(2, 9), dropped=(4, 15), captions=_caption)
    selection = read_manifest(manifest)
    runs = {}
    for workers in (0, 1, 2, 3):
        count = HeldOutCount()
        batches = list(kept_batches(selection, pil_to_tensor, 4, workers, count=count))
        runs[workers] = (batches, count)
    expected = [f"sample {i} is" for i in range(21) if i not in (2, 9, 4, 15)]  # tar order, kept and decodable
    texts = [t for _, ts in runs[0][0] for t in ts]
    assert [t[: len(e)] for t, e in zip(texts, expected, strict=True)] == expected
    assert [len(ts) for _, ts in runs[0][0]] == [4, 4, 4, 4, 1]
    for workers in (1, 2, 3):
        batches, count = runs[workers]
        assert [ts for _, ts in batches] == [ts for _, ts in runs[0][0]], workers
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(batches, runs[0][0], strict=True))
        assert (count.pairs, count.undecodable) == (17, 2)
    limited = HeldOutCount()
    assert [len(ts) for _, ts in kept_batches(selection, pil_to_tensor, 4, 2, limit=6, count=limited)] == [4, 2]
    assert limited.pairs == 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("validate")
    manifest = write_dataset(root / "train", n_shards=2, per_shard=16)
    table = pq.read_table(manifest)
    domains = pc.if_else(pc.less(pc.cast(pc.utf8_slice_codeunits(table["key"], 8, 9), "int32"), 2), "general", "plant")
    pq.write_table(table.set_column(table.schema.get_field_index("domain"), "domain", domains), manifest)
    summary = train_main([
        "--manifest", str(manifest), "--output-dir", str(root / "run"), "--model", "DALIP-Tiny",
        "--batch-size", "8", "--max-steps", "2", "--warmup", "1", "--precision", "fp32", "--workers", "0",
        "--mbdc-dim", "6",
    ])  # fmt: skip
    return summary["checkpoint"], root


def test_validate_reports_model_mixture_and_a_loss_per_domain_independent_of_workers(checkpoint) -> None:
    path, root = checkpoint
    plant = write_dataset(root / "plant", n_shards=1, per_shard=12, corrupt=(3,), seed=1)
    general = write_dataset(root / "general", n_shards=1, per_shard=12, seed=2)
    reports = [
        validate_main(["--checkpoint", path, "--manifest", f"plant={plant}", f"general={general}", "--batch-size",
                       "4", "--workers", str(workers), "--output", str(root / f"v{workers}.json")])
        for workers in (0, 2)
    ]  # fmt: skip
    report = json.loads((root / "v2.json").read_text())
    assert report == reports[1]
    assert report["model"] == "DALIP-Tiny" and report["alpha"] == 0.5
    mixture = report["training_mixture"]  # keys ending in 0 or 1 were relabelled general: 4 of every 10
    assert sum(mixture["rows"].values()) == 32 and mixture["share"]["general"] == pytest.approx(
        mixture["rows"]["general"] / 32
    )
    assert 0 < mixture["rows"]["general"] < 32
    assert report["plant"]["domain"] == "plant" and report["general"]["domain"] == "general"
    assert report["plant"]["skipped"] == 1 and report["plant"]["batches"] == 2  # 11 decodable: 2 full batches
    assert math.isfinite(report["plant"]["loss"])
    assert reports[0]["plant"]["loss"] == reports[1]["plant"]["loss"]  # the same batches with 0 or 2 workers
    assert reports[0]["general"]["loss"] == reports[1]["general"]["loss"]
