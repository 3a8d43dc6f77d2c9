"""The DALIP loss, composed from open_clip's ``ClipLoss`` (its gather, local-loss and rank behaviour included).

Two variants (DESIGN.md section 5):
- ``sum`` (the reference code): ``alpha * InfoNCE(f) + (1 - alpha) * InfoNCE(z)`` with one shared temperature;
- ``combined`` (the paper's figure): one InfoNCE over ``lambda1 * sim(f) + lambda2 * sim(z)``. Because
  ``lambda1 <f_i, f_t> + lambda2 <z_i, z_t>`` is the dot product of ``[sqrt(l1) f, sqrt(l2) z]`` on both
  sides, it is ``ClipLoss`` on those concatenated features, so distributed gathering needs no new code.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from open_clip import ClipLoss
from torch import nn

LossVariant = Literal["sum", "combined"]
LOSS_VARIANTS: tuple[str, ...] = ("sum", "combined")


class DalipLoss(nn.Module):
    """Returns named terms: ``loss`` (to optimise) and the unweighted InfoNCE terms it is made of."""

    def __init__(
        self,
        alpha: float = 0.5,
        variant: LossVariant = "sum",
        lambdas: tuple[float, float] = (1.0, 1.0),
        local_loss: bool = False,
        gather_with_grad: bool = False,
        cache_labels: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        super().__init__()
        if variant not in LOSS_VARIANTS:
            raise ValueError(f"loss variant must be one of {LOSS_VARIANTS}, got {variant!r}")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        if min(lambdas) < 0:
            raise ValueError(f"lambdas must be non-negative (they weight similarities), got {lambdas}")
        self.alpha = alpha
        self.variant = variant
        self.lambdas = lambdas
        self.clip_loss = ClipLoss(
            local_loss=local_loss,
            gather_with_grad=gather_with_grad,
            cache_labels=cache_labels,
            rank=rank,
            world_size=world_size,
        )

    def forward(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``out`` is ``DalipModel.forward``'s dict: normalised ``image_f/z``, ``text_f/z`` and ``logit_scale``."""
        if self.variant == "combined":
            return self._combined(out)
        return self._sum(out)

    def _sum(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        scale = out["logit_scale"]
        loss_f = self.clip_loss(out["image_f"], out["text_f"], scale)
        loss_z = self.clip_loss(out["image_z"], out["text_z"], scale)
        return {"loss": self.alpha * loss_f + (1.0 - self.alpha) * loss_z, "loss_f": loss_f, "loss_z": loss_z}

    def _combined(self, out: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        w_f, w_z = (math.sqrt(v) for v in self.lambdas)
        image = torch.cat([w_f * out["image_f"], w_z * out["image_z"]], dim=-1)
        text = torch.cat([w_f * out["text_f"], w_z * out["text_z"]], dim=-1)
        loss = self.clip_loss(image, text, out["logit_scale"])
        return {"loss": loss, "loss_combined": loss}
