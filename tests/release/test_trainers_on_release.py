"""A release trains as it is: open_clip's own trainer reads its shards, ``dalip.train`` its manifest.

Only the ``release_dir`` fixture and the release contract (see ``conftest.py``) are assumed, so the same tests run
on the synthetic release and on a real build's release.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pyarrow.parquet as pq
import torch

from dalip.checkpoint import load_checkpoint
from pipeline.core.schema import RELEASE_SCHEMA
from tests.conftest import REPO

TINY_CONFIG = REPO / "dalip" / "model_configs" / "DALIP-Tiny.json"
BATCH = 4


def _sizes(release: Path) -> dict[str, int]:
    return json.loads((release / "shards" / "sizes.json").read_text())


def _shard_pattern(release: Path) -> str:
    """The brace pattern open_clip_train takes for ``--train-data``: every shard of the release."""
    names = sorted(_sizes(release))
    assert names == [f"{i:05d}.tar" for i in range(len(names))], names
    return str(release / "shards" / f"{{00000..{len(names) - 1:05d}}}.tar")


def _kept_rows(release: Path) -> list[dict]:
    table = pq.read_table(release / "manifest.parquet", columns=["shard", "key", "keep"])
    return [r for r in table.to_pylist() if r["keep"]]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
            "NO_ALBUMENTATIONS_UPDATE": "1", "WANDB_MODE": "disabled", "CUDA_VISIBLE_DEVICES": ""}  # fmt: skip


def _run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


def test_release_follows_the_contract(release_dir: Path) -> None:
    schema = pq.read_schema(release_dir / "manifest.parquet")
    assert schema.remove_metadata().equals(RELEASE_SCHEMA), schema
    kept = _kept_rows(release_dir)
    sizes = _sizes(release_dir)
    assert json.loads((release_dir / "sizes.json").read_text()) == sizes
    in_shards: set[tuple[str, str]] = set()
    for name in sorted(sizes):
        with tarfile.open(release_dir / "shards" / name) as tar:
            members = tar.getnames()
        keys = [m.split(".", 1)[0] for m in members]
        assert keys == sorted(keys), f"{name}: members not in key order"
        assert all(re.fullmatch(r"\d{9}", k) for k in keys), name
        samples = {}
        for member in members:
            key, ext = member.split(".", 1)
            samples.setdefault(key, set()).add(ext)
        assert all(exts == {"jpg", "txt", "json"} for exts in samples.values()), (name, samples)
        assert sizes[name] == len(samples), f"sizes.json: {sizes[name]} samples in {name}, the tar: {len(samples)}"
        in_shards.update({(f"shards/{name}", key) for key in samples})
    assert {(r["shard"], r["key"]) for r in kept} == in_shards
    assert len(kept) == sum(sizes.values())


def test_open_clip_dataset_size_comes_from_sizes_json(release_dir: Path) -> None:
    from open_clip_train.data import get_dataset_size

    assert get_dataset_size(_shard_pattern(release_dir)) == (len(_kept_rows(release_dir)), len(_sizes(release_dir)))


def test_open_clip_trainer_runs_an_epoch_on_the_shards(release_dir: Path, tmp_path: Path) -> None:
    # open_clip_train.main unchanged; the tiny config reaches it as a local-dir model ({"model_cfg": ...}).
    model_dir = (
        subprocess.run(  # the README's command: DALIP-Tiny as an open_clip local-dir model
            [sys.executable, "-m", "dalip.tiny", str(tmp_path / "DALIP-Tiny")],
            capture_output=True,
            text=True,
            check=True,
        )
        .stdout.strip()
        .removeprefix("local-dir:")
    )
    assert json.loads((Path(model_dir) / "open_clip_config.json").read_text())["model_cfg"] == json.loads(
        TINY_CONFIG.read_text()
    )
    n = sum(_sizes(release_dir).values())  # no --train-num-samples: the trainer reads shards/sizes.json
    cmd = [
        sys.executable, "-m", "open_clip_train.main", "--dataset-type", "webdataset",
        "--train-data", _shard_pattern(release_dir), "--model", f"local-dir:{model_dir}", "--device", "cpu",
        "--precision", "fp32", "--batch-size", str(BATCH), "--epochs", "1", "--workers", "1", "--warmup", "1",
        "--lr", "1e-3", "--seed", "0", "--log-every-n-steps", "1", "--report-to", "", "--logs", str(tmp_path / "logs"),
        "--name", "release", "--save-frequency", "1", "--zeroshot-frequency", "0",
    ]  # fmt: skip
    proc = _run(cmd, tmp_path)
    steps = math.ceil(n / BATCH)
    log = (tmp_path / "logs" / "release" / "out.log").read_text()
    assert f"[{steps * BATCH}/{steps * BATCH} (100%)]" in log, proc.stderr[-3000:]
    assert len(re.findall(r"Train Epoch: 0 \[", log)) == steps
    assert "KeyError" not in log + proc.stderr and "Handling webdataset error" not in log + proc.stderr
    ckpt = torch.load(tmp_path / "logs" / "release" / "checkpoints" / "epoch_1.pt", map_location="cpu")
    assert ckpt["epoch"] == 1 and all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_dalip_trainer_trains_and_resumes_from_the_manifest(release_dir: Path, tmp_path: Path) -> None:
    n = len(_kept_rows(release_dir))
    steps_per_epoch = n // BATCH
    out = tmp_path / "dalip"

    def train(*extra: str) -> subprocess.CompletedProcess:
        cmd = [
            sys.executable, "-m", "dalip.train", "--manifest", str(release_dir / "manifest.parquet"),
            "--output-dir", str(out), "--model", "DALIP-Tiny", "--epochs", "2", "--batch-size", str(BATCH),
            "--precision", "fp32", "--workers", "1", "--warmup", "1", "--mbdc-dim", "8", "--caption", "dalip",
            "--save-every", str(steps_per_epoch), "--device", "cpu", *extra,
        ]  # fmt: skip
        return _run(cmd, REPO)

    first = train("--max-steps", str(steps_per_epoch))
    assert f"{n} kept samples, {len(_sizes(release_dir))} shards, {steps_per_epoch} steps/epoch" in first.stderr
    assert (out / "checkpoints" / "latest.txt").read_text().strip() == f"step_{steps_per_epoch:08d}.pt"
    second = train("--resume", "latest")
    assert f"resumed from step {steps_per_epoch}" in second.stderr

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = {r["step"]: r["loss"] for r in records if "step" in r}
    assert sorted(losses) == list(range(1, 2 * steps_per_epoch + 1))
    assert all(math.isfinite(v) for v in losses.values())
    epochs = [r for r in records if r.get("event") == "epoch_end"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    assert all(e["corrupt_images"] == 0 and e["shard_errors"] == 0 for e in epochs)
    ckpt = load_checkpoint(out / "checkpoints" / f"step_{2 * steps_per_epoch:08d}.pt")
    assert ckpt["step"] == 2 * steps_per_epoch and ckpt["steps_per_epoch"] == steps_per_epoch
