"""One DALIP training step of a fixed global batch, under torchrun (each rank its slice) or in one process.

``python tests/dalip/ddp_step.py OUT [--gather-with-grad]``: writes rank 0's loss terms and every parameter's
gradient (after DDP's averaging) to ``OUT`` (a torch file of tensors). Dropout is off and the MBDC variant is the
first one (no BatchNorm, whose batch statistics are per rank by design), so the step depends on the global batch
only.
"""

from __future__ import annotations

import sys

import open_clip
import torch
from torch.nn.parallel import DistributedDataParallel

from dalip.bdc import MbdcConfig
from dalip.distributed import cleanup, init_distributed
from dalip.loss import DalipLoss
from dalip.model import DalipModel
from dalip.tiny import register_tiny_model

GLOBAL_BATCH = 8


def step(out_path: str, gather_with_grad: bool) -> None:
    info = init_distributed("cpu")
    register_tiny_model()
    torch.manual_seed(0)
    model, _, _ = DalipModel.create("DALIP-Tiny", None, mbdc=MbdcConfig(heads=4, dim=6, dropout=0.0,
                                                                         variant="layernorm"))  # fmt: skip
    tokenizer = open_clip.get_tokenizer("DALIP-Tiny")
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(GLOBAL_BATCH, 3, 32, 32, generator=generator)
    texts = tokenizer([f"a photo of plant number {i}, {'leafy ' * i}" for i in range(GLOBAL_BATCH)])
    per_rank = GLOBAL_BATCH // info.world_size
    local = slice(info.rank * per_rank, (info.rank + 1) * per_rank)
    loss_fn = DalipLoss(0.5, "sum", (1.0, 1.0), False, gather_with_grad, rank=info.rank, world_size=info.world_size)
    ddp = DistributedDataParallel(model) if info.distributed else model
    model.train()
    losses = loss_fn(ddp(images[local], texts[local]))
    losses["loss"].backward()
    if info.is_main:
        grads = {f"grad/{name}": p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
        torch.save({**{f"loss/{k}": v.detach() for k, v in losses.items()}, **grads}, out_path)
    cleanup(info)


if __name__ == "__main__":
    step(sys.argv[1], "--gather-with-grad" in sys.argv[2:])
