"""Time per training step and peak memory: DALIP (MBDC heads + DALIP loss) against plain CLIP (open_clip's
ClipLoss) on the same open_clip backbone, batch and optimizer (AdamW, fp32; one full step = forward, loss,
backward, optimizer step).

Time: one child process holds both (DALIP wraps the very CLIP module, each with its own AdamW) and alternates
CLIP and DALIP steps, so background load on a shared machine hits both alike; ms/step is the fastest of the
timed steps (the least disturbed), the throughput ratio is ``min t_clip / min t_dalip``, and the median over
rounds of ``t_clip / t_dalip`` is reported beside it. Memory: one child per variant, so neither hides the other's peak;
the CUDA allocator's peak on GPU, and on CPU the growth of the process's peak RSS over its RSS before the model
was built. The last line reads ``RESULT train_step ratio=<DALIP/CLIP throughput> ...`` for the last model.

    python benchmarks/train_step.py                       # DALIP-Tiny at batch 64, ViT-B-16 at batch 4
    python benchmarks/train_step.py --models ViT-B-16 --batch-sizes 8 --rounds 8
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# The reference MBDC (d = 46) for real backbones; a smaller one for the tiny model, as its tests use.
DEFAULT_MBDC_DIM = {"DALIP-Tiny": 16}


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _setup(spec: dict[str, Any], variants: tuple[str, ...]) -> tuple[dict[str, Any], Any, float]:
    """Build the backbone once and a ``step()`` closure per variant; returns them, the device and base RSS."""
    import open_clip
    import torch

    sys.path.insert(0, str(ROOT))
    from dalip import DalipLoss, DalipModel, MbdcConfig
    from dalip.tiny import register_tiny_model

    register_tiny_model()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    base_rss = _rss_mb()
    clip, _, _ = open_clip.create_model_and_transforms(spec["model"], device=device)
    if spec.get("grad_checkpointing"):
        clip.set_grad_checkpointing(True)  # both variants: DALIP wraps this very module
    image = torch.randn(spec["batch_size"], 3, *clip.visual.image_size, device=device)
    captions = [f"Plantae species {i}, commonly known as plant number {i}." for i in range(spec["batch_size"])]
    text = open_clip.get_tokenizer(spec["model"])(captions).to(device)
    steps = {}
    for variant in variants:
        if variant == "dalip":
            mbdc = MbdcConfig(dim=spec["mbdc_dim"], hidden_dim=spec["mbdc_hidden"] or None)
            model, dalip_loss = DalipModel(clip, mbdc).to(device).train(), DalipLoss(alpha=0.5)

            def loss_of(model=model, dalip_loss=dalip_loss):
                return dalip_loss(model(image, text))["loss"]
        else:
            model, clip_loss = clip.train(), open_clip.ClipLoss()

            def loss_of(model=model, clip_loss=clip_loss):
                return clip_loss(*model(image, text))

        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1)

        def step(loss_of=loss_of, optimizer=optimizer) -> None:
            optimizer.zero_grad(set_to_none=True)
            loss_of().backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()

        steps[variant] = (step, sum(p.numel() for p in model.parameters()))
    return steps, device, base_rss


def time_child(spec: dict[str, Any]) -> dict[str, Any]:
    steps, device, _ = _setup(spec, ("clip", "dalip"))
    times: dict[str, list[float]] = {"clip": [], "dalip": []}
    for i in range(spec["warmup"] + spec["rounds"]):
        order = ("clip", "dalip") if i % 2 == 0 else ("dalip", "clip")  # neither always goes first
        for variant in order:
            t0 = time.perf_counter()
            steps[variant][0]()
            if i >= spec["warmup"]:
                times[variant].append(time.perf_counter() - t0)
    paired = [c / d for c, d in zip(times["clip"], times["dalip"], strict=True)]
    # The fastest step of each is its time with the least interference; the paired median is a cross-check.
    return {"device": str(device), "ratio": min(times["clip"]) / min(times["dalip"]),
            "ratio_paired_median": statistics.median(paired),
            **{f"ms_{v}": 1000 * min(t) for v, t in times.items()},
            **{f"ms_median_{v}": 1000 * statistics.median(t) for v, t in times.items()},
            **{f"ms_all_{v}": [round(1000 * x, 1) for x in t] for v, t in times.items()},
            **{f"params_{v}_m": s[1] / 1e6 for v, s in steps.items()}}  # fmt: skip


def memory_child(spec: dict[str, Any], variant: str) -> dict[str, Any]:
    import torch

    steps, device, base_rss = _setup(spec, (variant,))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):  # the second step holds gradients, optimizer state and activations at once
        steps[variant][0]()
    if device.type == "cuda":
        return {"peak_mem_mb": torch.cuda.max_memory_allocated() / 2**20}
    return {"peak_mem_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base_rss}  # KiB on Linux


def _child(spec: dict[str, Any]) -> dict[str, Any]:
    cmd = [sys.executable, __file__, "--child", json.dumps(spec)]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark child {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def compare(args: argparse.Namespace, model: str, batch_size: int) -> dict[str, Any]:
    spec = {"model": model, "batch_size": batch_size, "mbdc_dim": args.mbdc_dim or DEFAULT_MBDC_DIM.get(model, 46),
            "mbdc_hidden": args.mbdc_hidden, "warmup": args.warmup, "rounds": args.rounds,
            "grad_checkpointing": args.grad_checkpointing}  # fmt: skip
    timing = _child({**spec, "mode": "time"})
    mem = {v: _child({**spec, "mode": v})["peak_mem_mb"] for v in ("clip", "dalip")}
    summary = {**spec, **timing, "mem_clip_mb": mem["clip"], "mem_dalip_mb": mem["dalip"],
               "mem_ratio": mem["dalip"] / mem["clip"]}  # fmt: skip
    print(json.dumps(summary), flush=True)
    return summary


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        spec = json.loads(argv[1])
        print(json.dumps(time_child(spec) if spec["mode"] == "time" else memory_child(spec, spec["mode"])))
        return []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["DALIP-Tiny", "ViT-B-16"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 4], help="one per model")
    p.add_argument("--rounds", type=int, default=6, help="timed (CLIP step, DALIP step) pairs")
    p.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    p.add_argument("--mbdc-dim", type=int, default=None, help="MBDC reduced dim for every model (default: 46)")
    p.add_argument("--mbdc-hidden", type=int, default=None, help="MBDC linear width (default: BDC width, reference)")
    p.add_argument("--grad-checkpointing", action="store_true", help="open_clip activation checkpointing (both)")
    args = p.parse_args(argv)
    if len(args.batch_sizes) != len(args.models):
        p.error("give one --batch-sizes value per --models entry")
    results = [compare(args, m, b) for m, b in zip(args.models, args.batch_sizes, strict=True)]
    for r in results:
        print(f"{r['model']} batch={r['batch_size']} mbdc_dim={r['mbdc_dim']}: ratio={r['ratio']:.3f} "
              f"ratio_paired_median={r['ratio_paired_median']:.3f} "
              f"mem_ratio={r['mem_ratio']:.3f} ms_clip={r['ms_clip']:.1f} ms_dalip={r['ms_dalip']:.1f} "
              f"mem_clip_mb={r['mem_clip_mb']:.0f} mem_dalip_mb={r['mem_dalip_mb']:.0f}")  # fmt: skip
    last = results[-1]
    print(
        f"RESULT train_step ratio={last['ratio']:.3f} ratio_paired_median={last['ratio_paired_median']:.3f} "
        f"mem_ratio={last['mem_ratio']:.3f} "
        f"ms_per_step_clip={last['ms_clip']:.1f} ms_per_step_dalip={last['ms_dalip']:.1f} "
        f"mem_clip_mb={last['mem_clip_mb']:.0f} mem_dalip_mb={last['mem_dalip_mb']:.0f} model={last['model']} "
        f"batch={last['batch_size']} mbdc_dim={last['mbdc_dim']} mbdc_hidden={last['mbdc_hidden']} "
        f"device={last['device']}"
    )
    return results


if __name__ == "__main__":
    main()
