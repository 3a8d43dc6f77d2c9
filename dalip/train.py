"""Train DALIP on a PlantMix manifest: ``python -m dalip.train --manifest M ...`` or under ``torchrun``.

AdamW, warmup + cosine schedule, gradient clipping, AMP on GPU, DDP, checkpoints that resume exactly, a
progress bar and a JSONL metrics log (``<output-dir>/metrics.jsonl``), TensorBoard and wandb with ``--report-to``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from torch.distributed.optim import ZeroRedundancyOptimizer
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from dalip.bdc import VARIANTS, MbdcConfig
from dalip.checkpoint import load_checkpoint, resolve_resume, rng_state, save_checkpoint, set_rng_state
from dalip.data import ManifestSelection, ShardStream, StreamStats, make_loader, read_manifest, read_release
from dalip.distributed import DistInfo, all_reduce_sum, cleanup, init_distributed
from dalip.loss import LOSS_VARIANTS, DalipLoss
from dalip.model import DalipModel
from dalip.precision import PRECISIONS, autocast_for
from dalip.report import TrainReport, parse_report_to
from dalip.tiny import register_tiny_model

log = logging.getLogger("dalip.train")


@dataclass
class TrainConfig:
    manifest: list[str] | None  # Parquet file(s), directories or fsspec URLs (or train_data)
    output_dir: str
    model: str = "ViT-B-16"  # any open_clip model name, or DALIP-Tiny
    pretrained: str | None = None  # open_clip tag (e.g. "openai") or a local checkpoint path; None = random init
    caption: str = "caption"  # the caption column, or a key of caption_variants
    epochs: int = 1
    batch_size: int = 64  # per rank
    lr: float = 5e-4
    wd: float = 0.1
    warmup: int = 500  # steps of linear warmup before the cosine decay
    betas: tuple[float, float] = (0.9, 0.98)
    grad_clip: float = 1.0  # max gradient norm; 0 disables
    precision: str = "amp"  # amp: fp16 autocast + GradScaler on GPU (fp32 on CPU); amp_bf16; fp32
    workers: int = 2
    seed: int = 0
    alpha: float = 0.5
    loss_variant: str = "sum"
    lambdas: tuple[float, float] = (1.0, 1.0)
    mbdc: MbdcConfig = field(default_factory=MbdcConfig)
    shuffle_buffer: int = 1000
    save_every: int = 1000  # steps between checkpoints (one is also written at the end)
    log_every: int = 1
    resume: str | None = None  # "latest" or a checkpoint path; exact with the same world size and workers
    max_steps: int | None = None  # stop early after this many steps; the schedule still spans all epochs
    local_loss: bool = False
    gather_with_grad: bool = False
    device: str | None = None
    keep_last: int | None = None  # checkpoints kept (the newest); None = all
    train_data: str | None = None  # a release's shards, "dir/{00000..00012}.tar" (open_clip's form), not a manifest
    train_num_samples: int | None = None  # with train_data: the sample count; None = the shards' sizes.json
    train_data_upsampling_factors: list[float] | None = None  # with train_data: one weight per "::" part
    accum_freq: int = 1  # micro-batches per step: the contrastive loss sees accum_freq x batch_size per rank
    grad_checkpointing: bool = False  # recompute the towers' activations in backward (open_clip's)
    caption_index_dir: str | None = None  # with manifest: where each rank's caption index goes (default: temp dir)
    zero_optimizer: bool = False  # under DDP: shard AdamW's state over the ranks (ZeroRedundancyOptimizer)
    report_to: tuple[str, ...] = ()  # besides metrics.jsonl: "tensorboard", "wandb" (open_clip_train's names)
    wandb_project: str = "dalip"

    def __post_init__(self) -> None:
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.loss_variant not in LOSS_VARIANTS:
            raise ValueError(f"loss variant must be one of {LOSS_VARIANTS}, got {self.loss_variant!r}")
        if bool(self.manifest) == bool(self.train_data):
            raise ValueError("give --manifest or --train-data (a release's shards), one of them")
        if self.accum_freq < 1:
            raise ValueError(f"accum_freq must be at least 1, got {self.accum_freq}")
        self.report_to = parse_report_to(",".join(self.report_to))
        if self.keep_last is not None and self.keep_last < 1:
            raise ValueError(f"keep_last must be at least 1, got {self.keep_last}")


def lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at ``total`` steps."""
    if step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(model: torch.nn.Module, cfg: TrainConfig, distributed: bool = False) -> torch.optim.Optimizer:
    """AdamW; with ``cfg.zero_optimizer`` under DDP, torch's ZeroRedundancyOptimizer: each rank keeps the AdamW
    state (two fp32 moments per weight) of its share of the parameters only, and broadcasts its updated share."""
    # As open_clip: no weight decay on gains, biases and the temperature (all parameters with < 2 dims).
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    groups = [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": cfg.wd}]
    if cfg.zero_optimizer and distributed:
        return ZeroRedundancyOptimizer(groups, torch.optim.AdamW, lr=cfg.lr, betas=cfg.betas, eps=1e-6)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas, eps=1e-6)


def _read_manifest_once(cfg: TrainConfig, info: DistInfo) -> ManifestSelection:
    """The manifest's selection, its caption index built once: rank 0 builds it and sends the selection (shard
    lists and the index's path: nothing per row) to the other ranks; a rank that cannot see the index file (on
    another node, with a node-local temp dir) builds its own."""
    if not info.distributed:
        return read_manifest(cfg.manifest, cfg.caption, cfg.caption_index_dir)
    holder = [read_manifest(cfg.manifest, cfg.caption, cfg.caption_index_dir) if info.is_main else None]
    torch.distributed.broadcast_object_list(holder, src=0)
    selection = holder[0]
    if not info.is_main:
        if Path(selection.index.path).is_file():
            log.info("rank %d: using rank 0's caption index %s", info.rank, selection.index.path)
        else:
            selection = read_manifest(cfg.manifest, cfg.caption, cfg.caption_index_dir)
    return selection


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Run training; returns a summary (steps done, last loss, checkpoint path)."""
    info = init_distributed(cfg.device)
    register_tiny_model()
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if cfg.precision == "amp" and info.device.type != "cuda" and info.is_main:
        log.warning("precision amp applies on GPU only; running fp32 on %s", info.device)

    _seed_all(cfg.seed)  # the same initial weights on every rank
    model, preprocess_train, _ = DalipModel.create(cfg.model, cfg.pretrained, mbdc=cfg.mbdc, device=info.device)
    if cfg.grad_checkpointing:
        model.clip.set_grad_checkpointing(True)
    tokenizer = open_clip.get_tokenizer(cfg.model)
    if cfg.train_data:
        selection = read_release(
            cfg.train_data, cfg.caption, cfg.train_num_samples, cfg.train_data_upsampling_factors, cfg.seed
        )
    else:
        selection = _read_manifest_once(cfg, info)
    steps_per_epoch = selection.num_samples // (cfg.batch_size * cfg.accum_freq * info.world_size)
    if steps_per_epoch == 0:
        raise ValueError(
            f"{selection.num_samples} kept samples are fewer than one global batch "
            f"({cfg.batch_size} x {cfg.accum_freq} micro-batches x {info.world_size} ranks)"
        )
    total_steps = steps_per_epoch * cfg.epochs
    stream = ShardStream(
        selection, preprocess_train, tokenizer, cfg.batch_size, cfg.seed, info.rank, info.world_size,
        cfg.shuffle_buffer,
    )  # fmt: skip
    loader = make_loader(stream, cfg.workers, cfg.seed)
    loss_fn = DalipLoss(
        cfg.alpha, cfg.loss_variant, cfg.lambdas, cfg.local_loss, cfg.gather_with_grad,
        rank=info.rank, world_size=info.world_size,
    )  # fmt: skip
    optimizer = build_optimizer(model, cfg, info.distributed)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, cfg.warmup, total_steps))
    autocast = autocast_for(cfg.precision, info.device)
    use_scaler = cfg.precision == "amp" and info.device.type == "cuda"  # fp16 needs loss scaling; bf16 does not
    scaler = torch.amp.GradScaler(info.device.type, enabled=use_scaler)
    ddp_model = model
    if info.distributed:
        ddp_model = DistributedDataParallel(model, device_ids=[info.device] if info.device.type == "cuda" else None)

    step = 0
    if cfg.resume:
        step = _resume(cfg, out_dir, info, model, optimizer, scheduler, scaler)
    else:
        _seed_all(cfg.seed + info.rank)  # dropout differs across ranks, like their data
    payload = {"config": dataclasses.asdict(cfg), "steps_per_epoch": steps_per_epoch, "total_steps": total_steps}
    report = TrainReport(out_dir, step, cfg.report_to, payload, cfg.wandb_project) if info.is_main else None
    if info.is_main:
        log.info("%d kept samples, %d shards, %d steps/epoch", selection.num_samples, len(selection.shards),
                 steps_per_epoch)  # fmt: skip
    last_step = min(total_steps, cfg.max_steps or total_steps)
    bar = tqdm(total=last_step, initial=step, disable=not info.is_main, dynamic_ncols=True)
    terms: dict[str, float] = {}
    ckpt_path = None
    model.train()
    while step < last_step:
        epoch, skip = divmod(step, steps_per_epoch)
        stream.set_epoch(epoch, skip * cfg.accum_freq)
        epoch_stats = StreamStats()
        n_batches = min(steps_per_epoch, skip + last_step - step) - skip
        t_prev = time.perf_counter()
        batches = iter(itertools.islice(loader, n_batches * cfg.accum_freq))
        while micro := list(itertools.islice(batches, cfg.accum_freq)):
            t_data = time.perf_counter()
            pairs = [(b["image"].to(info.device, non_blocking=True), b["text"].to(info.device, non_blocking=True))
                     for b in micro]  # fmt: skip
            optimizer.zero_grad(set_to_none=True)
            if cfg.accum_freq == 1:
                with autocast:
                    losses = loss_fn(ddp_model(*pairs[0]))
                scaler.scale(losses["loss"]).backward()
            else:
                losses = accumulate(ddp_model, model, loss_fn, pairs, lambda loss: scaler.scale(loss).backward(),
                                    autocast)  # fmt: skip
            batch = {"stats": _merged_stats([b["stats"] for b in micro])}
            if cfg.grad_clip > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            lr = optimizer.param_groups[-1]["lr"]  # the rate this step used
            scheduler.step()
            with torch.no_grad():  # as open_clip: keep the temperature below 100
                model.logit_scale.clamp_(0, math.log(100))
            step += 1
            _add_stats(epoch_stats, batch["stats"])
            t_now = time.perf_counter()
            terms = {k: v.item() for k, v in losses.items()}
            rate = cfg.batch_size * cfg.accum_freq * info.world_size / (t_now - t_prev)
            bar.update(1)
            bar.set_postfix(loss=f"{terms['loss']:.4f}", samples_s=f"{rate:.1f}")
            if report and step % cfg.log_every == 0:
                report.step(step, {"epoch": epoch, "lr": lr, **terms, "logit_scale": model.logit_scale.exp().item(),
                                   "samples_per_s": rate, "data_s": t_data - t_prev})  # fmt: skip
            t_prev = t_now
            if step % cfg.save_every == 0 or step == last_step:
                ckpt_path = _save(out_dir, step, model, optimizer, scheduler, scaler, payload, info, cfg.keep_last)
        _log_epoch_stats(epoch, step, epoch_stats, info, report)
    bar.close()
    if report:
        report.close()
    cleanup(info)
    return {"step": step, "total_steps": total_steps, "checkpoint": str(ckpt_path) if ckpt_path else None, **terms}


FEATURES = ("image_f", "image_z", "text_f", "text_z")


def accumulate(
    ddp_model: torch.nn.Module,
    model: DalipModel,
    loss_fn: DalipLoss,
    micro_batches: list[tuple[torch.Tensor, torch.Tensor]],
    backward: Any,
    autocast: Any = contextlib.nullcontext(),
) -> dict[str, torch.Tensor]:
    """One step's gradients over several micro-batches, exact for the contrastive loss (open_clip's feature cache).

    Every micro-batch is first embedded without gradients; then each is embedded again with gradients and the
    loss is computed over all micro-batches' features (its own live, the others cached), and backpropagated:
    the gradients sum to those of one batch of all of them. Each micro-batch's second forward replays the RNG
    state of its first (the same dropout masks), BatchNorm's running statistics are restored after the cached
    pass (one update per micro-batch, as training without accumulation), and the temperature is live in the
    first micro-batch's loss only, so its gradient is counted once. Returns the loss terms over the whole step.
    """
    cached: list[dict[str, torch.Tensor]] = []
    states = []
    buffers = {name: b.clone() for name, b in model.named_buffers() if "running_" in name or "num_batches" in name}
    with torch.no_grad():
        for image, text in micro_batches:
            states.append(_rng_states())
            with autocast:
                out = ddp_model(image, text)
            cached.append({k: out[k].detach() for k in FEATURES})
    with torch.no_grad():
        for name, b in model.named_buffers():
            if name in buffers:
                b.copy_(buffers[name])
    losses: dict[str, torch.Tensor] = {}
    last = len(micro_batches) - 1
    for j, (image, text) in enumerate(micro_batches):
        _set_rng_states(states[j])
        sync = ddp_model.no_sync() if isinstance(ddp_model, DistributedDataParallel) and j < last else None
        with sync or contextlib.nullcontext(), autocast:
            out = ddp_model(image, text)
            features = {k: torch.cat([c[k] for c in cached[:j]] + [out[k]] + [c[k] for c in cached[j + 1 :]])
                        for k in FEATURES}  # fmt: skip
            scale = out["logit_scale"] if j == 0 else out["logit_scale"].detach()
            terms = loss_fn({**features, "logit_scale": scale})
            backward(terms["loss"])
        losses = {k: v.detach() for k, v in terms.items()}
    return losses


def _rng_states() -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    return torch.get_rng_state(), torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None


def _set_rng_states(states: tuple[torch.Tensor, list[torch.Tensor] | None]) -> None:
    torch.set_rng_state(states[0])
    if states[1] is not None:
        torch.cuda.set_rng_state_all(states[1])


def _merged_stats(stats: list[StreamStats]) -> StreamStats:
    total = StreamStats()
    for item in stats:
        _add_stats(total, item)
    return total


def _add_stats(total: StreamStats, batch: StreamStats) -> None:
    total.corrupt += batch.corrupt
    total.shard_errors += batch.shard_errors
    total.unselected += batch.unselected
    total.corrupt_keys.extend(batch.corrupt_keys[: max(0, 100 - len(total.corrupt_keys))])  # a sample to log


def _log_epoch_stats(epoch: int, step: int, stats: StreamStats, info: DistInfo, report: TrainReport | None) -> None:
    corrupt = int(all_reduce_sum(stats.corrupt, info))
    shard_errors = int(all_reduce_sum(stats.shard_errors, info))
    if stats.corrupt_keys:
        log.warning("rank %d skipped corrupt images: %s", info.rank, ", ".join(stats.corrupt_keys[:20]))
    if info.is_main:
        log.info("epoch %d: skipped %d corrupt images, %d shard read errors", epoch, corrupt, shard_errors)
        if report:
            report.event(step, {"event": "epoch_end", "epoch": epoch, "corrupt_images": corrupt,
                                "shard_errors": shard_errors})  # fmt: skip


def _save(
    out_dir: Path, step: int, model, optimizer, scheduler, scaler, payload: dict, info: DistInfo, keep_last: int | None
) -> Path:
    states = [None] * info.world_size
    if info.distributed:
        torch.distributed.all_gather_object(states, rng_state())
    else:
        states = [rng_state()]
    path = out_dir / "checkpoints" / f"step_{step:08d}.pt"
    if isinstance(optimizer, ZeroRedundancyOptimizer):
        optimizer.consolidate_state_dict(to=0)  # every rank sends its share; rank 0 saves the whole state
    if info.is_main:
        save_checkpoint(out_dir / "checkpoints", step, {
            **payload, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "rng": states,
        }, keep_last)  # fmt: skip
    if info.distributed:
        torch.distributed.barrier()
    return path


def _resume(cfg: TrainConfig, out_dir: Path, info: DistInfo, model, optimizer, scheduler, scaler) -> int:
    ckpt = load_checkpoint(resolve_resume(cfg.resume, out_dir / "checkpoints"), map_location=info.device)
    model.load_state_dict(ckpt["model"])
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    scaler.load_state_dict(ckpt["scaler"])
    states = ckpt["rng"]
    if len(states) == info.world_size:
        set_rng_state(states[info.rank])
    else:  # a different world size cannot replay the same randomness; start the ranks' streams fresh
        _seed_all(cfg.seed + info.rank + ckpt["step"])
    if info.is_main:
        log.info("resumed from step %d", ckpt["step"])
    return int(ckpt["step"])


def parse_args(argv: list[str] | None = None) -> TrainConfig:
    p = argparse.ArgumentParser(prog="python -m dalip.train", description=__doc__)
    p.add_argument("--manifest", nargs="+", help="PlantMix manifest(s): the kept rows are trained on")
    p.add_argument(
        "--train-data", help="a release's shards, e.g. 'release/shards/{00000..00012}.tar' (with sizes.json)"
    )
    p.add_argument("--train-num-samples", type=int, default=None, help="with --train-data, instead of sizes.json")
    p.add_argument("--train-data-upsampling-factors", type=float, nargs="+", default=None,
                   help="with --train-data a::b: one weight per part, e.g. 1 2 draws b twice as often")  # fmt: skip
    p.add_argument("--output-dir", required=True)
    p.add_argument("--model", default="ViT-B-16")
    p.add_argument("--pretrained", default=None, help="open_clip tag (openai, ...) or local checkpoint path")
    p.add_argument("--caption", default="caption", help="'caption' or a caption_variants key, e.g. dalip")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--wd", type=float, default=0.1)
    p.add_argument("--warmup", type=int, default=500)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--precision", choices=PRECISIONS, default="amp")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--alpha", type=float, default=0.5)
    p.add_argument("--loss-variant", choices=LOSS_VARIANTS, default="sum")
    p.add_argument("--lambdas", type=float, nargs=2, default=(1.0, 1.0), metavar=("L1", "L2"))
    p.add_argument("--mbdc-heads", type=int, default=4)
    p.add_argument("--mbdc-dim", type=int, default=46)
    p.add_argument("--mbdc-dropout", type=float, default=0.5)
    p.add_argument("--mbdc-eps", type=float, default=1e-5)
    p.add_argument("--mbdc-hidden", type=int, default=None)
    p.add_argument("--no-reweight", action="store_true", help="turn MBDC token re-weighting off")
    p.add_argument("--mbdc-variant", choices=VARIANTS, default="reference",
                   help="reference: the DALIP authors' MBDC; layernorm: this project's first version")  # fmt: skip
    p.add_argument("--mbdc-mask-padding", action="store_true",
                   help="text MBDC observes the tokens up to EOT (the authors' observes all 77)")  # fmt: skip
    p.add_argument("--shuffle-buffer", type=int, default=1000)
    p.add_argument("--save-every", type=int, default=1000)
    p.add_argument("--log-every", type=int, default=1)
    p.add_argument("--resume", default=None, help="'latest' or a checkpoint path")
    p.add_argument("--max-steps", type=int, default=None)
    p.add_argument("--local-loss", action="store_true")
    p.add_argument("--gather-with-grad", action="store_true")
    p.add_argument("--device", default=None)
    p.add_argument("--keep-last", type=int, default=None, help="keep only the newest N checkpoints")
    p.add_argument("--accum-freq", type=int, default=1,
                   help="micro-batches per step, exact for the contrastive loss (feature cache)")  # fmt: skip
    p.add_argument("--grad-checkpointing", action="store_true", help="open_clip's activation checkpointing")
    p.add_argument(
        "--caption-index-dir",
        help="with --manifest: folder for each rank's on-disk caption index (~100 bytes per kept row; temp dir)",
    )
    p.add_argument(
        "--zero-optimizer",
        action="store_true",
        help="under DDP, shard the optimizer state over the ranks (torch's ZeroRedundancyOptimizer)",
    )
    p.add_argument("--report-to", default="", help="also log to: tensorboard, wandb or tensorboard,wandb")
    p.add_argument("--wandb-project-name", dest="wandb_project", default="dalip")
    a = p.parse_args(argv)
    mbdc = MbdcConfig(
        a.mbdc_heads,
        a.mbdc_dim,
        a.mbdc_dropout,
        a.mbdc_eps,
        not a.no_reweight,
        a.mbdc_hidden,
        a.mbdc_variant,
        a.mbdc_mask_padding,
    )
    fields = {f.name for f in dataclasses.fields(TrainConfig)} - {"mbdc", "lambdas", "report_to"}
    return TrainConfig(
        **{k: v for k, v in vars(a).items() if k in fields}, lambdas=tuple(a.lambdas), mbdc=mbdc,
        report_to=parse_report_to(a.report_to),
    )  # fmt: skip


def main(argv: list[str] | None = None) -> dict[str, Any]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return train(parse_args(argv))


if __name__ == "__main__":
    main()
