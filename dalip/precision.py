"""The ``--precision`` choices of training and evaluation, and the autocast context each means."""

from __future__ import annotations

import torch

PRECISIONS = ("amp", "amp_bf16", "fp32")


def autocast_for(precision: str, device: str | torch.device) -> torch.autocast:
    """``amp``: fp16 autocast on GPU (fp32 elsewhere); ``amp_bf16``: bf16 autocast on any device; ``fp32``: none."""
    kind = torch.device(device).type
    if precision == "amp" and kind == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    if precision == "amp_bf16":
        return torch.autocast(kind, dtype=torch.bfloat16)
    return torch.autocast(kind, enabled=False)
