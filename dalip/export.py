"""Export the CLIP tower of a DALIP checkpoint as an open_clip checkpoint: ``python -m dalip.export``.

The file holds the open_clip model's ``state_dict`` only (no MBDC heads, optimizer or RNG state), so
``open_clip.create_model_and_transforms(<model>, pretrained=<file>)`` and open_clip_train's ``--pretrained``
load it, and any open_clip tool evaluates the first-order (``f``) features DALIP trained. Written atomically.

    python -m dalip.export --checkpoint runs/dalip/checkpoints/step_00010000.pt --output dalip-clip.pt
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from dalip.bdc import MbdcConfig
from dalip.checkpoint import load_checkpoint
from dalip.model import DalipModel
from dalip.tiny import register_tiny_model


def export_clip(checkpoint: str | Path, output: str | Path) -> str:
    """Write the checkpoint's open_clip tower to ``output``; returns the open_clip model name to load it with."""
    register_tiny_model()
    ckpt = load_checkpoint(checkpoint)
    cfg = ckpt["config"]
    model, _, _ = DalipModel.create(cfg["model"], None, mbdc=MbdcConfig.from_saved(cfg["mbdc"]))
    model.load_state_dict(ckpt["model"])
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(output.name + ".tmp")
    torch.save(model.clip.state_dict(), tmp)
    os.replace(tmp, output)
    return cfg["model"]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m dalip.export", description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", required=True, help="a dalip.train checkpoint (step_NNNNNNNN.pt)")
    p.add_argument("--output", required=True, help="the open_clip checkpoint to write")
    a = p.parse_args(argv)
    name = export_clip(a.checkpoint, a.output)
    print(f"wrote {a.output}: load with open_clip.create_model_and_transforms({name!r}, pretrained={a.output!r})")


if __name__ == "__main__":
    main()
