"""Time per training step and peak memory: DALIP (MBDC heads + DALIP loss) against plain CLIP (open_clip's
ClipLoss) on the same open_clip backbone, batch and optimizer (AdamW, fp32).

Each (model, variant) measurement runs in its own child process, so the peak memory of one does not hide the
other's; CLIP and DALIP children alternate and repeat, and the median step time is kept, so a busy machine
penalises both alike. Peak memory is the CUDA allocator's peak on GPU, and on CPU the growth of the process's
peak RSS over its RSS before the model was built. The last line reads
``RESULT train_step ratio=<DALIP/CLIP throughput> ...`` for the last model listed (ViT-B-16 by default).

    python benchmarks/train_step.py                       # DALIP-Tiny at batch 64, ViT-B-16 at batch 4
    python benchmarks/train_step.py --models ViT-B-16 --batch-sizes 8 --steps 8
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


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def child(model_name: str, variant: str, batch_size: int, steps: int, warmup: int, mbdc_dim: int) -> dict[str, Any]:
    """One measurement: build, warm up, time ``steps`` full training steps; report ms/step and peak memory."""
    import open_clip
    import torch

    sys.path.insert(0, str(ROOT))
    from dalip import DalipLoss, DalipModel, MbdcConfig
    from dalip.tiny import register_tiny_model

    register_tiny_model()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    base_rss = _rss_mb()
    clip, _, _ = open_clip.create_model_and_transforms(model_name, device=device)
    if variant == "dalip":
        model = DalipModel(clip, MbdcConfig(dim=mbdc_dim)).to(device)
        loss_fn = DalipLoss(alpha=0.5)

        def step_loss(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            return loss_fn(model(image, text))["loss"]
    else:
        model, loss_fn = clip, open_clip.ClipLoss()

        def step_loss(image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
            return loss_fn(*model(image, text))

    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5, weight_decay=0.1)
    size = clip.visual.image_size
    image = torch.randn(batch_size, 3, *size, device=device)
    captions = [f"Plantae species {i}, commonly known as plant number {i}." for i in range(batch_size)]
    text = open_clip.get_tokenizer(model_name)(captions).to(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for i in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        step_loss(image, text).backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    if device.type == "cuda":
        peak_mb = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak_mb = _peak_rss_mb() - base_rss
    n_params = sum(p.numel() for p in model.parameters())
    return {"model": model_name, "variant": variant, "batch_size": batch_size, "device": str(device),
            "ms_per_step": 1000 * statistics.median(times), "ms_all": [round(1000 * t, 1) for t in times],
            "peak_mem_mb": peak_mb, "params_m": n_params / 1e6, "threads": torch.get_num_threads()}  # fmt: skip


def _run_child(args: argparse.Namespace, model: str, variant: str, batch_size: int) -> dict[str, Any]:
    dim = args.mbdc_dim or DEFAULT_MBDC_DIM.get(model, 46)
    cmd = [sys.executable, __file__, "--child", model, variant, str(batch_size), str(args.steps), str(args.warmup),
           str(dim)]  # fmt: skip
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{model}/{variant} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["mbdc_dim"] = dim if variant == "dalip" else None
    return result


def compare(args: argparse.Namespace, model: str, batch_size: int) -> dict[str, Any]:
    runs: dict[str, list[dict[str, Any]]] = {"clip": [], "dalip": []}
    for _ in range(args.repeats):
        for variant in ("clip", "dalip"):  # alternate, so background load hits both alike
            runs[variant].append(_run_child(args, model, variant, batch_size))
    ms = {v: statistics.median(r["ms_per_step"] for r in rs) for v, rs in runs.items()}
    mem = {v: max(r["peak_mem_mb"] for r in rs) for v, rs in runs.items()}
    summary = {
        "model": model, "batch_size": batch_size, "device": runs["clip"][0]["device"],
        "mbdc_dim": runs["dalip"][0]["mbdc_dim"], "ms_clip": ms["clip"], "ms_dalip": ms["dalip"],
        "throughput_ratio": ms["clip"] / ms["dalip"], "mem_clip_mb": mem["clip"], "mem_dalip_mb": mem["dalip"],
        "mem_ratio": mem["dalip"] / mem["clip"], "params_clip_m": runs["clip"][0]["params_m"],
        "params_dalip_m": runs["dalip"][0]["params_m"],
    }  # fmt: skip
    print(json.dumps(summary), flush=True)
    return summary


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        model, variant, batch, steps, warmup, dim = argv[1:7]
        print(json.dumps(child(model, variant, int(batch), int(steps), int(warmup), int(dim))))
        return []
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=["DALIP-Tiny", "ViT-B-16"])
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 4], help="one per model")
    p.add_argument("--steps", type=int, default=5, help="timed steps per child")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=2, help="children per variant (alternating)")
    p.add_argument("--mbdc-dim", type=int, default=None, help="override the MBDC reduced dim for every model")
    args = p.parse_args(argv)
    if len(args.batch_sizes) != len(args.models):
        p.error("give one --batch-sizes value per --models entry")
    results = [compare(args, m, b) for m, b in zip(args.models, args.batch_sizes, strict=True)]
    for r in results[:-1]:
        print(f"{r['model']} b={r['batch_size']}: ratio={r['throughput_ratio']:.3f} mem_ratio={r['mem_ratio']:.3f} "
              f"ms_clip={r['ms_clip']:.1f} ms_dalip={r['ms_dalip']:.1f}")  # fmt: skip
    last = results[-1]
    print(
        f"RESULT train_step ratio={last['throughput_ratio']:.3f} mem_ratio={last['mem_ratio']:.3f} "
        f"ms_per_step_clip={last['ms_clip']:.1f} ms_per_step_dalip={last['ms_dalip']:.1f} "
        f"mem_clip_mb={last['mem_clip_mb']:.0f} mem_dalip_mb={last['mem_dalip_mb']:.0f} model={last['model']} "
        f"batch={last['batch_size']} mbdc_dim={last['mbdc_dim']} device={last['device']}"
    )
    return results


if __name__ == "__main__":
    main()
