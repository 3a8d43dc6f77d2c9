"""Checkpoints load weights-only: real DALIP checkpoints still open and resume, files that would run code never do."""

from __future__ import annotations

import contextlib
import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from dalip.checkpoint import load_checkpoint, set_rng_state
from dalip.train import main as train_main
from pipeline.core.config import EmbedConfig
from pipeline.models.clip import load_clip
from pipeline.models.safe_load import NUMPY_RNG_GLOBALS, UnsafeCheckpoint
from tests.conftest import REPO
from tests.dalip.conftest import write_dataset

TINY_CONFIG = str(REPO / "dalip" / "model_configs" / "DALIP-Tiny.json")


class RunsCodeOnLoad:
    """Unpickling this writes ``marker``: what a hostile "checkpoint" does instead of holding weights."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({str(self.marker)!r}, 'w').write('pwned')",)


def write_hostile(path: Path, marker: Path, writer: str) -> Path:
    payload = {"model": RunsCodeOnLoad(marker), "step": 4}
    if writer == "torch.save":
        torch.save(payload, path)
    else:  # a bare pickle, torch.load's legacy format
        path.write_bytes(pickle.dumps(payload, protocol=2))
    # The file is live: the full unpickler really runs it (else "the marker is absent" would prove nothing).
    with contextlib.suppress(RuntimeError):  # a bare pickle runs, then fails torch's magic-number check
        torch.load(path, weights_only=False)
    assert marker.exists()
    marker.unlink()
    return path


def _train_args(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--manifest", str(manifest), "--output-dir", str(out), "--model", "DALIP-Tiny", "--batch-size", "8",
        "--warmup", "1", "--precision", "fp32", "--workers", "0", "--mbdc-dim", "6", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("safety"), n_shards=2, per_shard=16)


@pytest.fixture(scope="module")
def trained(manifest: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint written by the trainer's own save path (model, optimizer, scheduler, scaler, RNG states)."""
    out = tmp_path_factory.mktemp("run")
    return Path(train_main(_train_args(manifest, out, "--max-steps", "2"))["checkpoint"])


def _draws() -> tuple:
    return random.random(), float(np.random.rand()), float(torch.rand(1))


def test_a_trainer_checkpoint_loads_weights_only_with_everything_resume_needs(trained: Path) -> None:
    reference = torch.load(trained, map_location="cpu", weights_only=False)  # how it loaded before
    ckpt = load_checkpoint(trained)
    assert set(ckpt) == set(reference) >= {"model", "optimizer", "scheduler", "scaler", "step", "config", "rng"}
    for name, value in reference["model"].items():
        assert torch.equal(ckpt["model"][name], value), name
    assert ckpt["scheduler"] == reference["scheduler"] and ckpt["config"] == reference["config"]
    for key, state in reference["optimizer"]["state"].items():
        assert torch.equal(ckpt["optimizer"]["state"][key]["exp_avg"], state["exp_avg"])
    # Restoring the RNG states from the weights-only load replays exactly the draws the full unpickle does.
    set_rng_state(reference["rng"][0])
    expected = _draws()
    set_rng_state(ckpt["rng"][0])
    assert _draws() == expected


def test_each_allowlisted_numpy_global_is_needed(trained: Path) -> None:
    for left_out in NUMPY_RNG_GLOBALS:
        rest = [g for g in NUMPY_RNG_GLOBALS if g is not left_out]
        with torch.serialization.safe_globals(rest), pytest.raises(pickle.UnpicklingError):
            torch.load(trained, weights_only=True)


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_resume_refuses_a_file_that_would_run_code(manifest: Path, tmp_path: Path, writer: str) -> None:
    out, marker = tmp_path / "run", tmp_path / "pwned"
    (out / "checkpoints").mkdir(parents=True)
    hostile = write_hostile(out / "checkpoints" / "step_00000004.pt", marker, writer)
    (out / "checkpoints" / "latest.txt").write_text(hostile.name + "\n")
    with pytest.raises(UnsafeCheckpoint, match="step_00000004.pt is not a safe checkpoint") as err:
        train_main(_train_args(manifest, out, "--max-steps", "6", "--resume", "latest"))
    assert not marker.exists()
    assert "weights_only" not in str(err.value)  # no advice to switch the protection off


def test_clip_loader_opens_a_trainer_checkpoint_as_its_open_clip_model(trained: Path) -> None:
    config = EmbedConfig(model="DALIP-Tiny", model_config=TINY_CONFIG, pretrained=str(trained), device="cpu")
    model, _, _ = load_clip(config)
    weights = load_checkpoint(trained)["model"]
    for name, value in model.state_dict().items():
        assert torch.equal(value, weights[f"clip.{name}"]), name


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_clip_loader_refuses_a_file_that_would_run_code(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    hostile = write_hostile(tmp_path / "weights.pt", marker, writer)
    config = EmbedConfig(model="DALIP-Tiny", model_config=TINY_CONFIG, pretrained=str(hostile), device="cpu")
    with pytest.raises(UnsafeCheckpoint, match=r"weights\.pt is not a safe checkpoint"):
        load_clip(config)
    assert not marker.exists()
