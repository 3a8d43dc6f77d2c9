"""`python -m dalip.train` end to end on tiny shards: the loss falls, resume is exact, torchrun DDP runs."""

from __future__ import annotations

import gc
import json
import math
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from dalip.checkpoint import load_checkpoint
from dalip.train import lr_factor, main
from tests.dalip.conftest import write_dataset

ROOT = Path(__file__).resolve().parents[2]


def _args(manifest: Path, out: Path, *extra: str) -> list[str]:
    return [
        "--manifest", str(manifest), "--output-dir", str(out), "--model", "DALIP-Tiny", "--epochs", "3",
        "--batch-size", "16", "--lr", "2e-3", "--wd", "0.05", "--warmup", "3", "--precision", "fp32",
        "--workers", "2", "--seed", "3", "--mbdc-dim", "8", "--shuffle-buffer", "64", "--save-every", "100",
        *extra,
    ]  # fmt: skip


def _losses(out: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "step" in r}


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("train"), n_shards=4, per_shard=32, corrupt=(9,), dropped=(4,))


def test_lr_schedule_warms_up_then_decays_to_zero() -> None:
    factors = [lr_factor(s, warmup=4, total=20) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(factors[3:], factors[4:], strict=False))
    assert lr_factor(20, 4, 20) == pytest.approx(0.0)


def test_twenty_steps_lower_the_loss_and_resume_reproduces_the_curve(shards: Path, tmp_path: Path) -> None:
    full = tmp_path / "full"
    summary = main(_args(shards, full, "--max-steps", "20"))
    assert summary["step"] == 20 and summary["total_steps"] == 3 * (126 // 16)
    losses = _losses(full)
    assert sorted(losses) == list(range(1, 21))
    assert all(math.isfinite(v) for v in losses.values())
    first, last = sum(losses[s] for s in (1, 2, 3)) / 3, sum(losses[s] for s in (18, 19, 20)) / 3
    assert last < first - 0.1, (first, last)
    records = (full / "metrics.jsonl").read_text()
    assert '"event": "epoch_end"' in records and '"corrupt_images": 1' in records

    # Stop after 10 steps (mid-epoch 2 of 3), then resume from the latest checkpoint.
    split = tmp_path / "split"
    main(_args(shards, split, "--max-steps", "10"))
    assert (split / "checkpoints" / "latest.txt").read_text().strip() == "step_00000010.pt"
    main(_args(shards, split, "--max-steps", "20", "--resume", "latest"))
    assert _losses(split) == losses  # exact float equality, step by step

    a = load_checkpoint(full / "checkpoints" / "step_00000020.pt")
    b = load_checkpoint(split / "checkpoints" / "step_00000020.pt")
    for k, v in a["model"].items():
        assert torch.equal(v, b["model"][k]), k
    assert a["scheduler"] == b["scheduler"] and a["config"]["model"] == "DALIP-Tiny"
    assert set(a) >= {"model", "optimizer", "scheduler", "scaler", "step", "config", "rng"}


def test_bad_arguments_fail_clearly(shards: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fewer than one global batch"):
        main(_args(shards, tmp_path / "big", "--batch-size", "1000"))
    with pytest.raises(FileNotFoundError, match="latest"):
        main(_args(shards, tmp_path / "nothing", "--resume", "latest"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(shards: Path, out: Path, *extra: str) -> str:
    """``dalip.train`` on 2 gloo ranks; returns their log (stderr)."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
        "--master_port", str(_free_port()), "-m", "dalip.train",
        *_args(shards, out, "--workers", "1", "--batch-size", "8", *extra),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stderr


def test_torchrun_two_cpu_processes_with_gloo(shards: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    log = _torchrun(shards, out, "--max-steps", "6", "--save-every", "3")
    assert len(re.findall(r"caption index of \d+ kept rows", log)) == 1  # built by rank 0 only ...
    assert log.count("rank 1: using rank 0's caption index") == 1  # ... and read by rank 1
    losses = _losses(out)
    assert sorted(losses) == list(range(1, 7)) and all(math.isfinite(v) for v in losses.values())
    ckpt = load_checkpoint(out / "checkpoints" / "step_00000006.pt")
    assert ckpt["steps_per_epoch"] == 126 // (8 * 2)  # the epoch is split over two ranks
    assert len(ckpt["rng"]) == 2  # one RNG state per rank
    assert ckpt["model"]["clip.logit_scale"].isfinite()


def test_keep_last_rotates_checkpoints_and_grad_checkpointing_changes_no_number(shards: Path, tmp_path: Path) -> None:
    """--keep-last 2 leaves the newest two (latest.txt still valid); --grad-checkpointing recomputes activations in
    backward and gives the same losses and weights as without, step for step."""
    plain, ckpt = tmp_path / "plain", tmp_path / "ckpt"
    main(_args(shards, plain, "--max-steps", "6", "--save-every", "1", "--keep-last", "2"))
    assert sorted(p.name for p in (plain / "checkpoints").glob("step_*.pt")) == [
        "step_00000005.pt", "step_00000006.pt",
    ]  # fmt: skip
    assert (plain / "checkpoints" / "latest.txt").read_text().strip() == "step_00000006.pt"
    main(_args(shards, ckpt, "--max-steps", "6", "--save-every", "6", "--grad-checkpointing"))
    assert _losses(ckpt) == pytest.approx(_losses(plain), abs=1e-5)
    a, b = (load_checkpoint(d / "checkpoints" / "step_00000006.pt")["model"] for d in (plain, ckpt))
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)
    with pytest.raises(ValueError, match="keep_last must be at least 1"):
        main(_args(shards, tmp_path / "zero", "--keep-last", "0"))


def test_the_exported_clip_tower_loads_in_open_clip_and_gives_the_same_features(shards: Path, tmp_path: Path) -> None:
    import open_clip

    from dalip.evaluate import load_model
    from dalip.export import export_clip

    out = tmp_path / "run"
    main(_args(shards, out, "--max-steps", "2"))
    checkpoint = out / "checkpoints" / "step_00000002.pt"
    name = export_clip(checkpoint, tmp_path / "clip.pt")
    clip, _, _ = open_clip.create_model_and_transforms(name, pretrained=str(tmp_path / "clip.pt"))
    dalip_model, _, tokenizer, _ = load_model(str(checkpoint))
    image = torch.rand(2, 3, 32, 32)
    text = tokenizer(["a photo of a teal striped plant", "an olive plant"])
    clip.eval()
    with torch.no_grad():
        assert torch.allclose(clip.encode_image(image), dalip_model.encode_image(image), atol=1e-6)
        assert torch.allclose(clip.encode_text(text), dalip_model.encode_text(text), atol=1e-6)


def test_ranks_come_from_slurm_when_torchrun_is_absent(monkeypatch) -> None:
    from dalip.distributed import init_distributed

    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "1")
    monkeypatch.setenv("SLURM_LOCALID", "0")
    info = init_distributed("cpu")
    assert (info.rank, info.world_size, info.local_rank, info.distributed) == (0, 1, 0, False)


def test_the_first_mbdc_variant_and_padding_masking_train(shards: Path, tmp_path: Path) -> None:
    for flags in (("--mbdc-variant", "layernorm"), ("--mbdc-mask-padding",), ("--accum-freq", "2")):
        summary = main(_args(shards, tmp_path / flags[-1].strip("-"), "--max-steps", "2", *flags))
        assert summary["step"] == 2 and math.isfinite(summary["loss"])


@pytest.mark.parametrize("gather_with_grad", [True, False])
def test_one_ddp_step_on_two_processes_equals_the_same_global_batch_in_one(tmp_path: Path, gather_with_grad) -> None:
    """With --gather-with-grad, 2 ranks x 4 samples give the loss and the (DDP-averaged) gradients of 1 process x
    8 samples; without it (open_clip's default) the loss is the same, the towers' gradients are 1/world_size of
    it (each rank's loss reaches only its own features) and the temperature's is the same (every rank's loss
    depends on it whole): what the README says about --gather-with-grad."""
    script = ROOT / "tests" / "dalip" / "ddp_step.py"
    flags = ["--gather-with-grad"] if gather_with_grad else []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GLOO_SOCKET_IFNAME": "lo"}
    one = subprocess.run([sys.executable, str(script), str(tmp_path / "one.pt"), *flags], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), str(script), str(tmp_path / "two.pt"), *flags],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("one", "two"))
    assert set(a) == set(b) and any(k.startswith("grad/") for k in a)
    for key in a:
        scaled = not gather_with_grad and key.startswith("grad/") and key != "grad/clip.logit_scale"
        expected = a[key] * (0.5 if scaled else 1.0)
        torch.testing.assert_close(b[key], expected, rtol=1e-4, atol=1e-6, msg=key)


@pytest.mark.parametrize("variant", ["layernorm", "reference"])
def test_accumulating_two_micro_batches_gives_the_gradients_of_one_batch_of_both(variant: str) -> None:
    """Exact for the contrastive loss: 2 x 4 samples with the feature cache = 8 samples at once (loss and every
    gradient, temperature included); dropout masks replayed, BatchNorm's running statistics updated once per
    micro-batch. (Reference MBDC's BatchNorm normalises each micro-batch by its own statistics, so that variant is
    compared with dropout and BatchNorm in eval mode for the batch statistics.)"""
    import copy

    import open_clip

    from dalip.bdc import MbdcConfig
    from dalip.loss import DalipLoss
    from dalip.model import DalipModel
    from dalip.tiny import register_tiny_model
    from dalip.train import accumulate

    register_tiny_model()
    torch.manual_seed(0)
    model, _, _ = DalipModel.create("DALIP-Tiny", None, mbdc=MbdcConfig(heads=4, dim=6, dropout=0.0, variant=variant))
    tokenizer = open_clip.get_tokenizer("DALIP-Tiny")
    images = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    texts = tokenizer([f"plant {i} {'leaf ' * i}" for i in range(8)])
    loss_fn = DalipLoss()
    whole, split = model, copy.deepcopy(model)
    for m in (whole, split):
        m.train()
        for module in m.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()
    loss = loss_fn(whole(images, texts))["loss"]
    loss.backward()
    terms = accumulate(
        split, split, loss_fn, [(images[:4], texts[:4]), (images[4:], texts[4:])], lambda value: value.backward()
    )
    torch.testing.assert_close(terms["loss"], loss.detach())
    for (name, a), b in zip(whole.named_parameters(), split.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)
    if variant == "reference":  # in train mode, BatchNorm counts one update per micro-batch, not two
        counted = copy.deepcopy(model).train()
        accumulate(counted, counted, loss_fn, [(images[:4], texts[:4]), (images[4:], texts[4:])], lambda v: None)
        assert int(counted.image_mbdc.reduce[1].num_batches_tracked) == 2 * 4  # 2 micro-batches x 4 heads


def _release(folder: Path, shards: int = 2, per_shard: int = 16) -> Path:
    """Release-layout shards: <key>.jpg, <key>.txt (the caption), <key>.json (metadata with caption_variants)."""
    import io

    import numpy as np
    import webdataset as wds
    from PIL import Image

    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for s in range(shards):
        with wds.TarWriter(str(folder / f"{s:05d}.tar")) as sink:
            for i in range(per_shard):
                buf = io.BytesIO()
                Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(buf, format="JPEG")
                name = f"Plantae species {s * per_shard + i}"
                sink.write({"__key__": f"{s:05d}{i:04d}", "jpg": buf.getvalue(), "txt": f"a photo of {name}.",
                            "json": json.dumps({"caption_variants": {"dalip": f"{name}."}}).encode()})  # fmt: skip
    (folder / "sizes.json").write_text(json.dumps({f"{s:05d}.tar": per_shard for s in range(shards)}))
    return folder


def test_training_reads_a_release_by_its_shards_and_sizes_json(tmp_path: Path) -> None:
    from dalip.data import read_release

    shards = _release(tmp_path / "release" / "shards")
    pattern = str(shards / "{00000..00001}.tar")
    selection = read_release(pattern, "dalip")
    assert selection.num_samples == 32 and len(selection.shards) == 2
    assert selection.caption_of({"txt": b"plain.", "json": b'{"caption_variants": {"dalip": "Variant."}}'}) == (
        "Variant."
    )
    assert read_release(pattern).caption_of({"txt": b" a photo. "}) == "a photo."
    args = ["--output-dir", str(tmp_path / "run"), "--model", "DALIP-Tiny", "--batch-size", "8", "--epochs", "2",
            "--precision", "fp32", "--workers", "0", "--mbdc-dim", "6", "--warmup", "1"]  # fmt: skip
    summary = main(["--train-data", pattern, "--caption", "dalip", *args])
    assert summary["total_steps"] == 2 * (32 // 8) and summary["step"] == 8 and math.isfinite(summary["loss"])
    (shards / "sizes.json").unlink()
    with pytest.raises(FileNotFoundError, match="sizes.json not found; give --train-num-samples"):
        main(["--train-data", pattern, *args])
    assert main(["--train-data", pattern, "--train-num-samples", "16", "--max-steps", "1", *args])["total_steps"] == 4
    with pytest.raises(ValueError, match="give --manifest or --train-data"):
        main(args)


def test_two_releases_are_weighted_by_their_upsampling_factors(tmp_path: Path) -> None:
    from dalip.data import read_release

    plant = _release(tmp_path / "plant" / "shards", shards=4, per_shard=8)
    general = _release(tmp_path / "general" / "shards", shards=2, per_shard=8)
    data = f"{plant}/{{00000..00003}}.tar::{general}/{{00000..00001}}.tar"
    even = read_release(data)
    assert even.num_samples == 48 and len(even.shards) == 6
    weighted = read_release(data, upsampling=[0.5, 2.0], seed=3)
    assert weighted.num_samples == 2 * 8 + 2 * 2 * 8  # half of the plant shards, the general ones twice
    assert sum(url.startswith(str(general)) for url in weighted.shards) == 4
    assert read_release(data, upsampling=[0.5, 2.0], seed=3).shards == weighted.shards  # seeded
    with pytest.raises(ValueError, match="2 part\\(s\\) but 1 upsampling factor"):
        read_release(data, upsampling=[2.0])
    summary = main(["--train-data", data, "--train-data-upsampling-factors", "0.5", "2", "--output-dir",
                    str(tmp_path / "run"), "--model", "DALIP-Tiny", "--batch-size", "8", "--precision", "fp32",
                    "--workers", "0", "--mbdc-dim", "6", "--max-steps", "2"])  # fmt: skip
    assert summary["total_steps"] == 48 // 8


def test_zero_optimizer_trains_as_plain_ddp_and_resumes_exactly(shards: Path, tmp_path: Path) -> None:
    """--zero-optimizer shards AdamW's state over 2 ranks; AdamW is per parameter, so the losses and weights are
    plain DDP's; the checkpoint holds the whole (consolidated) state, and a run resumed from it goes on exactly."""
    plain, zero = tmp_path / "plain", tmp_path / "zero"
    layernorm = ("--mbdc-variant", "layernorm")  # no BatchNorm: its statistics are per rank by design
    _torchrun(shards, plain, *layernorm, "--max-steps", "4", "--save-every", "4")
    _torchrun(shards, zero, *layernorm, "--max-steps", "2", "--save-every", "2", "--zero-optimizer")
    _torchrun(
        shards, zero, *layernorm, "--max-steps", "4", "--save-every", "2", "--zero-optimizer", "--resume", "latest"
    )
    assert sorted(_losses(zero)) == [1, 2, 3, 4]
    assert _losses(zero) == pytest.approx(_losses(plain), abs=1e-5)
    a, b = (load_checkpoint(d / "checkpoints" / "step_00000004.pt") for d in (plain, zero))
    assert all(torch.allclose(a["model"][k], b["model"][k], atol=1e-5) for k in a["model"])
    shapes = [sorted(tuple(s["exp_avg"].shape) for s in c["optimizer"]["state"].values()) for c in (a, b)]
    assert shapes[0] == shapes[1] and len(shapes[0]) > 10  # every parameter's moments, gathered from both ranks


def test_report_to_tensorboard_logs_the_jsonl_numbers_and_a_resume_replaces_the_rerun_steps(
    shards: Path, tmp_path: Path
) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = tmp_path / "run"
    index = tmp_path / "index"
    main(_args(shards, out, "--max-steps", "4", "--save-every", "2", "--report-to", "tensorboard",
               "--caption-index-dir", str(index)))  # fmt: skip
    gc.collect()
    assert index.is_dir() and not any(index.iterdir())  # the run's caption index was made there, then removed
    (out / "checkpoints" / "latest.txt").write_text("step_00000002.pt\n")  # go back to step 2 and run 3-4 again
    main(_args(shards, out, "--max-steps", "4", "--resume", "latest", "--report-to", "tensorboard"))
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == [1, 2, 3, 4]
    assert [e.value for e in logged] == pytest.approx(list(_losses(out).values()), rel=1e-6)
    assert {"train/lr", "train/logit_scale", "train/samples_per_s", "data/corrupt_images"} <= set(
        events.Tags()["scalars"]
    )
    with pytest.raises(ValueError, match="--report-to: unknown target"):
        main(_args(shards, tmp_path / "bad", "--report-to", "tensorbored"))


def test_report_to_wandb_logs_every_step_under_one_run_id_across_a_resume(
    shards: Path, tmp_path: Path, monkeypatch
) -> None:
    """The numbers handed to wandb (a recording stand-in for ``wandb.init``/``log``) are metrics.jsonl's; the
    real package then writes an offline run under <output-dir>/wandb with the run id the resume reuses."""
    import wandb

    calls: list[tuple[str, Any]] = []

    class Run:
        def log(self, values: dict, step: int) -> None:
            calls.append(("log", (step, values)))

        def finish(self) -> None:
            calls.append(("finish", None))

    def init(**kwargs: Any) -> Run:
        calls.append(("init", kwargs))
        return Run()

    out = tmp_path / "run"
    with monkeypatch.context() as patched:
        patched.setattr(wandb, "init", init)
        main(_args(shards, out, "--max-steps", "3", "--report-to", "wandb", "--wandb-project-name", "plantmix"))
    (first, kwargs), *logged, last = calls
    assert first == "init" and last == ("finish", None)
    assert kwargs["project"] == "plantmix" and kwargs["resume"] == "allow" and kwargs["dir"] == str(out)
    assert tuple(kwargs["config"]["config"]["report_to"]) == ("wandb",)
    losses = {step: values["train/loss"] for _, (step, values) in logged if "train/loss" in values}
    assert losses == pytest.approx(_losses(out), rel=1e-6)

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    real = tmp_path / "offline"
    main(_args(shards, real, "--max-steps", "2", "--save-every", "2", "--report-to", "wandb"))
    main(_args(shards, real, "--max-steps", "3", "--resume", "latest", "--report-to", "wandb"))
    run_id = (real / "wandb_run_id").read_text().strip()
    runs = sorted((real / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and all(r.name.endswith(f"-{run_id}") and (r / f"run-{run_id}.wandb").stat().st_size
                                  for r in runs)  # fmt: skip
